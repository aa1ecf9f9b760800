// boot.js: runs in <head> before anything is drawn (a classic script: the page allows no inline
// script). It takes a token out of the address bar at once, so the link the hub printed leaves
// no token in the history or on screen, and applies the remembered theme before the first paint.
(() => {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token !== null) {
    try {
      sessionStorage.setItem("mission-control.token", token.trim());
    } catch {
      window.missionControlFragmentToken = token.trim(); // no storage: this page only
    }
    history.replaceState(null, "", location.pathname + location.search);
  }
  try {
    const theme = localStorage.getItem("mission-control.theme");
    if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
  } catch {
    /* no storage: the system theme */
  }
})();
