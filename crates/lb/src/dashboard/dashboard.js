// The dashboard's script: reads one JSON snapshot a second from
// /dashboard/events (server-sent events; EventSource reconnects by itself) and
// updates the picture and the panels. No inline code, no other origin.
'use strict';

(function () {
  const me = document.body.dataset.node;
  const byId = (id) => document.getElementById(id);

  function text(id, value) {
    const el = byId(id);
    if (el && el.textContent !== value) el.textContent = value;
  }

  function setClass(id, value) {
    const el = byId(id);
    if (el) el.setAttribute('class', value);
  }

  function num(x, digits) {
    return x === null || x === undefined ? '–' : Number(x).toFixed(digits);
  }

  function ms(x) {
    if (x === null || x === undefined) return '–';
    return x < 10 ? x.toFixed(2) + ' ms' : x.toFixed(0) + ' ms';
  }

  function percent(x) {
    if (x === null || x === undefined) return '–';
    return x === 0 ? '0%' : (x * 100).toFixed(1) + '%';
  }

  function cell(row, value, cls) {
    const td = document.createElement('td');
    td.textContent = value === null || value === undefined ? '–' : String(value);
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function fillTable(id, rows) {
    const body = byId(id).tBodies[0];
    const fresh = document.createElement('tbody');
    for (const cells of rows) {
      const tr = document.createElement('tr');
      for (const [value, cls] of cells) cell(tr, value, cls);
      fresh.appendChild(tr);
    }
    body.replaceWith(fresh);
  }

  function fillList(id, items, empty) {
    const list = byId(id);
    const fresh = document.createElement('ul');
    fresh.id = id;
    if (items.length === 0) items = [empty];
    for (const item of items) {
      const li = document.createElement('li');
      li.textContent = item;
      fresh.appendChild(li);
    }
    list.replaceWith(fresh);
  }

  function peerWords(peer) {
    if (!peer) return 'not heard';
    let words = peer.name + ' ' + peer.state;
    if (peer.gone) words += ' (gone)';
    else if (peer.last_heartbeat_ms_ago !== undefined) words += ', beat ' + peer.last_heartbeat_ms_ago + ' ms ago';
    return words;
  }

  function update(s) {
    text('at', 'as of ' + s.at);
    const cluster = s.cluster;
    const active = cluster.active;
    const holder = active.length === 0 ? 'nobody' : active.length === 1 ? active[0] : active.join(' and ') + ' (split!)';
    text('holder', 'held by ' + holder);
    text('active', cluster.floating
      ? 'floating address ' + cluster.floating + ': held by ' + holder
      : 'no floating address: the load balancers are not a cluster');
    for (const lb of cluster.lbs) {
      setClass('f-' + lb.name, 'edge floating' + (lb.role === 'active' ? ' active' : ''));
    }
    fillTable('lbs', cluster.lbs.map((lb) => [
      [lb.name + (lb.name === s.served_by ? ' (this page)' : ''), null],
      [lb.role, 'state ' + lb.role],
      [peerWords(lb.peer), null],
    ]));
    fillList('events', cluster.events.map((e) => e.at + ' ' + e.node + ': ' + e.text), 'none seen yet');

    const rows = [];
    // A node the picture lacks (a reload added it): the page is older than the site.
    byId('stale').hidden = s.nodes.every((n) => byId('n-' + n.name));
    for (const n of s.nodes) {
      const activeNode = n.cluster_role === 'active';
      setClass('n-' + n.name, 'node ' + n.role + ' ' + n.state + (activeNode ? ' active' : ''));
      let state = n.state;
      if (n.cluster_role) state += ' · ' + n.cluster_role;
      if (n.state === 'down' && n.error) state = 'down: ' + n.error.replace(/^admin \S+: /, '');
      text('s-' + n.name, state.length > 30 ? state.slice(0, 29) + '…' : state);
      if (n.state === 'down') {
        text('l-' + n.name, '');
        text('t-' + n.name, '');
      } else {
        text('l-' + n.name, num(n.requests_per_second, 1) + ' req/s · ' + percent(n.error_rate) + ' 5xx · ' + num(n.connections_open, 0) + ' conns');
        text('t-' + n.name, 'p50 ' + ms(n.p50_ms) + ' · p99 ' + ms(n.p99_ms));
      }
      const checks = n.checks.map((c) => c.by + ': ' + c.state).join(', ');
      rows.push([
        [n.name + ' (' + n.role + ')', null],
        [n.state === 'down' ? 'down: ' + (n.error || '') : n.state + (n.cluster_role ? ', ' + n.cluster_role : ''), 'state ' + n.state],
        [num(n.requests_per_second, 1), 'n'],
        [percent(n.error_rate), 'n'],
        [ms(n.p50_ms), 'n'],
        [ms(n.p99_ms), 'n'],
        [n.connections_open, 'n'],
        [checks || '–', null],
      ]);
    }
    fillTable('nodes', rows);

    const db = s.database;
    text('db-summary', db.reported_by
      ? 'as ' + db.reported_by + ' sees it: ' + (db.healthy ? 'healthy' : 'NOT healthy' + (db.error ? ' (' + db.error + ')' : '')) +
        (db.users !== undefined && db.users !== null ? ' · ' + db.users + ' users, ' + db.posts + ' posts' : '')
      : 'no application server answers: the database is not seen');
    const f = db.failover;
    text('db-failover', f
      ? 'automatic failover, decided by ' + f.decided_by + ' · primary ' + f.primary + ' · ' +
        f.failovers + ' failover(s)' +
        (f.last ? ' · last: ' + f.last.from + ' → ' + f.last.to + ', ' + f.last.at + ', in ' + f.last.took_ms + ' ms' : '') +
        (f.rejoined && f.rejoined.length ? ' · rejoined: ' + f.rejoined.join(', ') : '') +
        (f.kept_out && f.kept_out.length ? ' · KEPT OUT: ' + f.kept_out.map((k) => k.server + ' (' + k.why + ')').join('; ') : '') +
        (f.waiting ? ' · ' + f.waiting : '')
      : 'no load balancer decides a database failover (manual, or SQLite)');
    for (const d of db.servers) {
      setClass('n-db-' + d.name, 'node db ' + d.state);
      let line = d.state;
      if (d.lag_seconds !== undefined && d.lag_seconds !== null) line += ' · lag ' + num(d.lag_seconds, 1) + ' s';
      text('s-db-' + d.name, line);
      text('l-db-' + d.name, d.read_your_writes_fallbacks !== undefined && d.read_your_writes_fallbacks !== null
        ? d.read_your_writes_fallbacks + ' read-your-writes fallbacks' : '');
    }
    fillTable('db', db.servers.map((d) => [
      [d.name, null],
      [d.role, null],
      [d.state + (d.problem ? ': ' + d.problem : ''), 'state ' + d.state],
      [d.lag_seconds === undefined || d.lag_seconds === null ? '–' : num(d.lag_seconds, 1) + ' s', 'n'],
      [d.reads, 'n'],
      [d.writes, 'n'],
      [d.read_your_writes_fallbacks, 'n'],
    ]));

    fillList('errors', s.errors.map((e) => e.at + ' ' + e.node + ' ' + e.status + ' ' + e.method + ' ' + e.path + ' rid=' + e.request_id), 'none');
  }

  function contact(words, cls) {
    const el = byId('contact');
    el.textContent = words;
    el.className = cls;
    const peers = byId('peers');
    if (peers) peers.hidden = cls !== 'lost';
  }

  const source = new EventSource('/dashboard/events');
  source.onopen = () => contact('live', 'live');
  source.onmessage = (event) => {
    contact('live', 'live');
    update(JSON.parse(event.data));
  };
  source.onerror = () => contact('lost contact with ' + me + ', trying again', 'lost');
})();
