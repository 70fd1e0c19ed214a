// Baton's dashboard: live updates. The server says when something changed (server-sent
// events at /ui/events); the page then fetches itself and swaps in the sections marked
// data-live, leaving forms (and what is typed into them) alone. Without JavaScript the
// pages work as they are, one load at a time.
(() => {
  'use strict';
  const status = document.getElementById('live-status');
  const say = (text) => { if (status) status.textContent = text; };
  if (!document.querySelector('[data-live]') || !window.EventSource) return;
  let busy = false;
  let again = false;
  const refresh = async () => {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const r = await fetch(location.href, {
        headers: { Accept: 'text/html' }, credentials: 'same-origin', cache: 'no-store',
      });
      if (r.ok) {
        const fresh = new DOMParser().parseFromString(await r.text(), 'text/html');
        for (const el of document.querySelectorAll('[data-live]')) {
          const next = el.id && fresh.getElementById(el.id);
          if (next && next.innerHTML !== el.innerHTML) el.replaceWith(document.importNode(next, true));
        }
        document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
        say('live');
      } else if (r.status === 401) {
        say('signed out');
      }
    } catch (e) {
      say('offline');
    } finally {
      busy = false;
      if (again) { again = false; refresh(); }
    }
  };
  const since = document.body.dataset.generation;
  const events = new EventSource('/ui/events' + (since ? '?since=' + encodeURIComponent(since) : ''));
  events.addEventListener('changed', refresh);
  events.onopen = () => say('live');
  events.onerror = () => say('reconnecting');
})();
