"use strict";
// Sign-in from a personal link. The link is /r#<token>: the part after # never leaves the browser, so the
// token is in no server or proxy log. Older links /r/<token> carry it in the path instead. Either way the
// token is posted to /api/session (which sets the session cookie) and removed from the address bar first.
(async () => {
  const status = document.getElementById("signin-status");
  const fail = (text) => { status.textContent = text; status.classList.add("error"); };
  const legacy = location.pathname.match(/^\/r\/([^/]+)$/);
  let token = location.hash.length > 1 ? location.hash.slice(1) : legacy ? legacy[1] : "";
  try { token = decodeURIComponent(token); } catch (error) { /* keep it as given */ }
  history.replaceState(null, "", "/r");  // no token in the address bar, the history or a bookmark
  if (!token) {
    const me = await fetch("/api/me", { credentials: "same-origin" });
    if (me.ok) { location.replace((await me.json()).role === "admin" ? "/admin" : "/read"); return; }
    fail("No access token: open the personal link you were given.");
    return;
  }
  try {
    const response = await fetch("/api/session", {
      method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token }),
    });
    if (response.ok) { location.replace((await response.json()).next); return; }
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch (error) { /* not JSON */ }
    fail("Could not sign in (" + response.status + ": " + detail + "). Check your personal link.");
  } catch (error) {
    fail("Could not reach the study server (" + error.message + ").");
  }
})();
