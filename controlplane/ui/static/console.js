// The Ecosystem console's one script (no framework, nothing to build).
// It follows /ui/events (server-sent events: "change" carries the revision)
// and, on each change, fetches this page's content again (X-Eco-Fragment: 1)
// and swaps it in. When the stream fails it shows the banner: the page is
// then showing the state as of the last revision it got, and may be stale.
// See docs/console.md.
(function () {
  "use strict";

  var body = document.body;
  var content = document.getElementById("content");
  var banner = document.getElementById("banner");
  var bannerRevision = document.getElementById("banner-revision");
  var liveState = document.getElementById("live-state");
  var liveRevision = document.getElementById("live-revision");
  var inFlight = false;
  var again = false;

  function setState(text, stale) {
    liveState.textContent = text;
    body.classList.toggle("stale", stale);
    banner.hidden = !stale;
    if (stale) {
      bannerRevision.textContent = body.dataset.revision;
    }
  }

  // A filter takes effect as soon as it is chosen; the address keeps only
  // the filters that are set (it can be bookmarked or shared).
  function applyFilters(form) {
    var params = new URLSearchParams();
    new FormData(form).forEach(function (value, key) {
      if (value) {
        params.append(key, value);
      }
    });
    var query = params.toString();
    location.assign(form.getAttribute("action") + (query ? "?" + query : ""));
  }

  function wireFilters(root) {
    root.querySelectorAll("form.filters").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        applyFilters(form);
      });
      form.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
        select.addEventListener("change", function () {
          applyFilters(form);
        });
      });
    });
  }

  function refresh() {
    if (inFlight) {
      again = true;
      return;
    }
    inFlight = true;
    fetch(location.pathname + location.search, {
      headers: { "X-Eco-Fragment": "1" },
      credentials: "same-origin",
      cache: "no-store",
    })
      .then(function (response) {
        if (response.status === 401) {
          location.assign("/ui/login?expired=1");
          return null;
        }
        var revision = response.headers.get("X-Eco-Revision");
        return response.text().then(function (html) {
          content.innerHTML = html;
          wireFilters(content);
          if (revision) {
            body.dataset.revision = revision;
            liveRevision.textContent = revision;
          }
        });
      })
      .catch(function () {
        setState("lost", true);
      })
      .finally(function () {
        inFlight = false;
        if (again) {
          again = false;
          refresh();
        }
      });
  }

  function follow() {
    if (!window.EventSource) {
      liveState.textContent = "off (this browser has no EventSource)";
      return;
    }
    var source = new EventSource("/ui/events");
    var lost = false;
    // "hello" opens each connection (a reconnection included): refresh when
    // the page missed something. "change": something shown changed (not only
    // the registry's revision: a sidecar's ack, a stream's depth): refresh.
    source.addEventListener("hello", function (event) {
      if (lost || event.data !== body.dataset.revision) {
        refresh();
      }
      lost = false;
      setState("live", false);
    });
    source.addEventListener("change", function () {
      refresh();
    });
    source.addEventListener("error", function () {
      lost = true;
      setState("lost", true);
      if (source.readyState === EventSource.CLOSED) {
        // Refused (a token gone, or the console gone): ask why, then retry.
        fetch("/ui/events", { method: "HEAD", credentials: "same-origin" })
          .then(function (response) {
            if (response.status === 401) {
              location.assign("/ui/login?expired=1");
            }
          })
          .catch(function () {})
          .finally(function () {
            setTimeout(follow, 2000);
          });
      }
    });
  }

  wireFilters(document);
  follow();
})();
