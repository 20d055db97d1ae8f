// hookrouter console: live rows and forms without a reload. Every page
// works without this file; it only adds to them. Rows arrive rendered and
// escaped by the server, so nothing here builds markup out of data.
(function () {
  'use strict';

  var live = document.getElementById('live');

  function announce(text) {
    if (!live) { return; }
    // A change of text is what screen readers announce.
    live.textContent = '';
    window.setTimeout(function () { live.textContent = text; }, 50);
  }

  // Parse one server-rendered row.
  function rowFrom(html) {
    var tpl = document.createElement('template');
    tpl.innerHTML = html.trim();
    var tr = tpl.content.firstElementChild;
    return tr && tr.tagName === 'TR' ? tr : null;
  }

  function cellText(tr, i) {
    var cell = tr.cells[i];
    return cell ? cell.textContent.trim() : '';
  }

  // Load the page again in the background and take its table body.
  function refreshRows(rows) {
    fetch(window.location.href, { credentials: 'same-origin' })
      .then(function (r) { return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, 'text/html');
        var fresh = doc.getElementById('event-rows');
        if (fresh) { rows.replaceChildren.apply(rows, Array.prototype.slice.call(fresh.children)); }
      })
      .catch(function () {});
  }

  var rows = document.getElementById('event-rows');
  var pause = document.getElementById('pause-live');
  if (rows && rows.dataset.stream && window.EventSource) {
    var held = [];
    var insert = function (html) {
      var tr = rowFrom(html);
      if (!tr) { return; }
      var key = tr.getAttribute('data-key');
      var old = null;
      Array.prototype.forEach.call(rows.children, function (r) {
        if (r.getAttribute('data-key') === key) { old = r; }
      });
      tr.classList.add('new');
      Array.prototype.forEach.call(rows.querySelectorAll('tr.empty-row'), function (r) { r.remove(); });
      if (old) {
        rows.replaceChild(tr, old);
      } else {
        rows.insertBefore(tr, rows.firstElementChild);
        announce('New event: ' + (cellText(tr, 2) || 'no type') + ' from ' + cellText(tr, 1) + '.');
      }
    };
    var source = new EventSource(rows.dataset.stream);
    source.addEventListener('row', function (ev) {
      if (pause && pause.checked) { held.push(ev.data); return; }
      insert(ev.data);
    });
    source.addEventListener('resync', function () {
      if (pause && pause.checked) { return; }
      refreshRows(rows);
    });
    if (pause) {
      pause.addEventListener('change', function () {
        if (pause.checked) {
          announce('Live updates paused.');
        } else {
          var n = held.length;
          held.splice(0).forEach(insert);
          announce('Live updates resumed' + (n ? '; ' + n + ' new events.' : '.'));
        }
      });
    }
  }

  // Replay and cancel without leaving the page: post the same form, say
  // what happened, then show the page's new state.
  document.addEventListener('submit', function (ev) {
    var form = ev.target;
    if (!form.matches || !form.matches('form.replay, form.cancel') || !window.fetch) { return; }
    ev.preventDefault();
    var button = form.querySelector('button');
    if (button) { button.disabled = true; }
    fetch(form.action, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'X-Requested-With': 'fetch' },
      body: new URLSearchParams(new FormData(form))
    })
      .then(function (r) {
        return r.json().then(function (body) { return { ok: r.ok, body: body }; });
      })
      .then(function (res) {
        announce(res.body.message || (res.ok ? 'Done.' : 'Not done.'));
        if (res.ok) { return refreshMain(); }
      })
      .catch(function () { announce('The request failed; reload the page.'); })
      .then(function () { if (button) { button.disabled = false; } });
  });

  function refreshMain() {
    return fetch(window.location.href, { credentials: 'same-origin' })
      .then(function (r) { return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, 'text/html');
        var fresh = doc.getElementById('main');
        var main = document.getElementById('main');
        if (fresh && main) { main.replaceChildren.apply(main, Array.prototype.slice.call(fresh.childNodes)); }
      });
  }
})();
