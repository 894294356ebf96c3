"use strict";
async function refresh() {
  const response = await fetch("/api/progress", {credentials: "same-origin"});
  const body = document.querySelector("#progress-table tbody");
  if (!response.ok) { body.innerHTML = ""; const row = body.insertRow(); row.insertCell().textContent = "not signed in as administrator (" + response.status + ")"; return; }
  const data = await response.json();
  document.getElementById("title").textContent = (data.title || "Reader study") + ": progress";
  body.innerHTML = "";
  for (const reader of data.readers) {
    const row = body.insertRow();
    row.dataset.reader = reader.reader_id;
    for (const value of [reader.reader_id, reader.complete, reader.cases, reader.answers]) row.insertCell().textContent = value;
  }
}
refresh();
setInterval(refresh, 10000);
