// foobar: new posts appear at the top of the timeline as they are made. The page links
// this file only on the newest page of the timeline (its list has data-live). It opens
// the /live WebSocket on this same origin (ws: or wss: as the page came), and builds
// each post with textContent only: a post's text never becomes markup.
"use strict";

(() => {
  const list = document.querySelector("ol.posts[data-live]");
  if (!list || !("WebSocket" in window)) return;

  const format = new Intl.DateTimeFormat("en-CA", {
    timeZone: "UTC", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", hourCycle: "h23",
  });

  // The same markup the server renders for a post (views.rs post_list).
  const render = (post) => {
    const item = document.createElement("li");
    item.className = "post";
    item.dataset.id = String(post.id);
    const meta = document.createElement("div");
    meta.className = "meta";
    const author = document.createElement("a");
    author.className = "author";
    author.href = "/u/" + encodeURIComponent(post.author);
    author.textContent = "@" + post.author;
    const when = new Date(post.created_at * 1000);
    const time = document.createElement("time");
    time.dateTime = when.toISOString().replace(/\.\d{3}Z$/, "Z");
    time.textContent = format.format(when).replace(",", "") + " UTC";
    meta.append(author, " · ", time);
    const body = document.createElement("p");
    body.className = "body";
    body.textContent = post.body;
    item.append(meta, body);
    return item;
  };

  const show = (post) => {
    if (!Number.isInteger(post.id) || typeof post.author !== "string" ||
        typeof post.body !== "string" || !Number.isFinite(post.created_at)) return;
    if (list.querySelector(`li[data-id="${post.id}"]`)) return;
    // Newest first: after any post with a higher id (two app servers' posts may
    // arrive out of order), before the rest.
    let before = list.firstElementChild;
    while (before && Number(before.dataset.id) > post.id) before = before.nextElementSibling;
    list.insertBefore(render(post), before);
    const empty = document.querySelector("p.empty");
    if (empty) empty.remove();
  };

  let wait = 1000;
  const connect = () => {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}/live`);
    socket.addEventListener("open", () => { wait = 1000; });
    socket.addEventListener("message", (event) => {
      try {
        show(JSON.parse(event.data));
      } catch (_) {
        // Not a post: ignore it.
      }
    });
    // Reconnect with a growing pause (up to a minute), so a restarted or busy site is
    // not hammered by every open page at once.
    socket.addEventListener("close", () => {
      setTimeout(connect, wait + Math.random() * wait);
      wait = Math.min(wait * 2, 60000);
    });
  };
  connect();
})();
