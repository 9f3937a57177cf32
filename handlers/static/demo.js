/* ilianaai-avatar demo console: drives the gateway's public API exactly as the chatbot plugin does
 * (the paths, headers and bodies of README.md's routes and /openapi.json), so it doubles as a living check of them.
 * Plain browser JavaScript, no build step, no external resources. Settings come from the URL fragment:
 *   /demo#key=<customer api key>&petya=<petya base url>&petyaToken=<service token>[&gateway=<url>][&provider=liveavatar]
 */
(function () {
  'use strict';

  var DEFAULT_INTRO = 'Hello and welcome. How can I help you today?';
  var TRANSCRIPT_REFRESH_MS = 150; // after an utterance ends, the gateway stores it; then the page reads it back
  var PETYA_POLL_DELAYS = [300, 500, 800, 1200, 1500, 2000, 2500, 3000, 4000, 5000]; // ms, ~20 s in all
  var TALKING = { avatar_talking_message: 'avatar', user_talking_message: 'user' };
  var ENDING = { avatar_end_message: 'avatar', user_end_message: 'user' };
  var SPEECH_ON = { avatar_start_talking: 1, avatar_speech_start: 1 };
  var SPEECH_OFF = { avatar_stop_talking: 1, avatar_speech_end: 1, avatar_end_message: 1 };
  // LiveAvatar's events on agent-response (FULL mode), as the HeyGen-shaped ones above.
  var LIVEAVATAR_EVENTS = {
    'avatar.speak_started': 'avatar_start_talking', 'avatar.transcription.chunk': 'avatar_talking_message',
    'avatar.transcription': 'avatar_end_message', 'avatar.speak_ended': 'avatar_stop_talking'
  };
  var AGENT_CONTROL = 'agent-control'; // the topic LiveAvatar's commands go on (docs/upstream.md#liveavatar-room-events)
  var PHASE_LABELS = {
    idle: 'Idle', creating: 'Creating…', created: 'Ready to start', starting: 'Starting…', started: 'Live',
    stopping: 'Stopping…', stopped: 'Stopped'
  };

  function $(id) { return document.getElementById(id); }

  var el = {
    gatewayUrl: $('gatewayUrl'), apiKey: $('apiKey'), provider: $('provider'), phase: $('phase'),
    btnNew: $('btnNew'), btnStart: $('btnStart'), btnRepeat: $('btnRepeat'), btnTalk: $('btnTalk'),
    btnStop: $('btnStop'), taskText: $('taskText'), hint: $('hint'),
    conversationId: $('conversationId'), sessionId: $('sessionId'), introText: $('introText'),
    video: $('video'), livekitUrl: $('livekitUrl'), videoNote: $('videoNote'),
    timeline: $('timeline'), timelineCount: $('timelineCount'), btnClearTimeline: $('btnClearTimeline'),
    transcript: $('transcript'), petya: $('petyaTranscript'), btnPetyaRefresh: $('btnPetyaRefresh'),
    banner: $('banner'), bannerTitle: $('bannerTitle'), bannerText: $('bannerText'), bannerClose: $('bannerClose'),
    petyaUrl: $('petyaUrl'), petyaToken: $('petyaToken'), configStatus: $('configStatus'),
    btnLoadConfig: $('btnLoadConfig'), btnSaveConfig: $('btnSaveConfig'),
    cfgProvider: $('cfgProvider'), cfgProviderStatus: $('cfgProviderStatus'),
    cfg: {
      avatarId: $('cfgAvatarId'), intro: $('cfgIntro'), knowledgeBaseId: $('cfgKnowledgeBaseId'),
      voiceId: $('cfgVoiceId'), language: $('cfgLanguage')
    }
  };

  var state = {
    phase: 'idle',
    busy: false,
    session: null, // {provider, sessionId, token, conversationId, intro, livekitUrl, livekitToken}
    ws: null,
    room: null, // the DemoRoom (demo-room.js) of the live session's LiveKit room
    spoken: {}, // task id -> the avatar's words seen in the room (HeyGen), reported when it finishes
    closingSocket: false,
    turns: [], // the gateway's record: {role, text, at, sources}
    open: {}, // chunks still streaming on the socket, per role|task_id: {role, taskId, parts, at}
    pending: [], // utterances the page saw end but the gateway's record does not show yet
    refreshTimer: null,
    petyaRun: 0,
    timelineCount: 0,
    stickTimeline: true,
    storedProvider: undefined // the customer's `provider` as Petya last answered it (null: not set); undefined: not loaded
  };

  // --- settings -----------------------------------------------------------------------------------------------

  function fragment() {
    return new URLSearchParams(location.hash.replace(/^#/, ''));
  }

  function applyFragment() {
    var params = fragment();
    el.gatewayUrl.value = params.get('gateway') || el.gatewayUrl.value || location.origin;
    if (params.has('key')) el.apiKey.value = params.get('key');
    if (params.has('petya')) el.petyaUrl.value = params.get('petya');
    if (params.has('petyaToken')) el.petyaToken.value = params.get('petyaToken');
    var provider = params.get('provider');
    if (provider === 'heygen' || provider === 'liveavatar') setProvider(provider);
  }

  function provider() {
    var checked = el.provider.querySelector('input:checked');
    return checked ? checked.value : 'heygen';
  }

  function setProvider(value) {
    var input = el.provider.querySelector('input[value="' + value + '"]');
    if (input) input.checked = true;
  }

  function gatewayBase() { return el.gatewayUrl.value.trim().replace(/\/+$/, ''); }
  function petyaBase() { return el.petyaUrl.value.trim().replace(/\/+$/, ''); }
  function apiKey() { return el.apiKey.value.trim(); }

  // --- small helpers ------------------------------------------------------------------------------------------

  function make(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function clock(date) {
    var d = date || new Date();
    function pad(n, w) { return String(n).padStart(w || 2, '0'); }
    return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds()) + '.' + pad(d.getMilliseconds(), 3);
  }

  function short(text, max) {
    text = String(text === undefined || text === null ? '' : text).replace(/\s+/g, ' ').trim();
    max = max || 80;
    return text.length > max ? text.slice(0, max - 1) + '…' : text;
  }

  function randomHex(bytes) {
    var data = new Uint8Array(bytes);
    crypto.getRandomValues(data);
    return Array.prototype.map.call(data, function (b) { return b.toString(16).padStart(2, '0'); }).join('');
  }

  function newConversationId() { return 'demo-' + Date.now().toString(36) + '-' + randomHex(4); }

  function now() { return Date.now() / 1000; }

  function normalize(text) {
    return String(text || '').replace(/[^\p{L}\p{N}_\s]/gu, '').toLowerCase().replace(/\s+/g, ' ').trim();
  }

  // --- banner -------------------------------------------------------------------------------------------------

  function showBanner(title, text, level) {
    el.bannerTitle.textContent = title;
    el.bannerText.textContent = text;
    el.banner.dataset.level = level || 'error';
    el.banner.hidden = false;
  }

  function hideBanner() {
    el.banner.hidden = true;
    el.bannerTitle.textContent = '';
    el.bannerText.textContent = '';
  }

  // --- timeline -----------------------------------------------------------------------------------------------

  function statusClass(status) {
    if (typeof status !== 'number') return 'err';
    if (status < 300) return 'ok';
    if (status < 500) return 'warn';
    return 'err';
  }

  function addRow(kind, parts) {
    var row = make('li', 'ev ev-' + kind);
    row.dataset.kind = kind;
    row.appendChild(make('span', 't', clock()));
    parts.forEach(function (part) { row.appendChild(part); });
    el.timeline.appendChild(row);
    state.timelineCount += 1;
    el.timelineCount.textContent = state.timelineCount ? '(' + state.timelineCount + ')' : '';
    if (state.stickTimeline) el.timeline.scrollTop = el.timeline.scrollHeight;
    return row;
  }

  function restRow(target, method, path) {
    var status = make('span', 'status pending', '…');
    var took = make('span', 'ms', '');
    var badge = make('span', 'badge badge-' + method.toLowerCase(), method);
    var where = make('span', 'what');
    if (target !== 'gateway') where.appendChild(make('span', 'target', target));
    where.appendChild(make('span', 'path', path));
    var row = addRow('rest', [badge, where, status, took]);
    row.dataset.method = method;
    row.dataset.path = path;
    row.dataset.target = target;
    return {
      finish: function (code, ms, note) {
        row.dataset.status = String(code);
        status.textContent = String(code);
        status.className = 'status ' + statusClass(code);
        took.textContent = Math.round(ms) + ' ms';
        if (note) where.appendChild(make('span', 'note', note));
      }
    };
  }

  // A socket (WS) or LiveKit room (LK) event in the timeline: its type, and what it said.
  function eventRow(kind, badge, type, text, cls) {
    var what = make('span', 'what');
    what.appendChild(make('span', 'type', type));
    if (text) what.appendChild(make('span', 'wstext' + (cls ? ' ' + cls : ''), short(text, 90)));
    var row = addRow(kind, [make('span', 'badge badge-' + kind, badge), what]);
    row.dataset.type = type;
    return row;
  }

  function wsRow(type, text, cls) { return eventRow('ws', 'WS', type, text, cls); }

  function roomRow(type, text, cls) { return eventRow('room', 'LK', type, text, cls); }

  function infoRow(text, cls) {
    var row = addRow('info', [make('span', 'badge badge-info', 'i'), make('span', 'info-text' + (cls ? ' ' + cls : ''), text)]);
    return row;
  }

  // --- REST calls ---------------------------------------------------------------------------------------------

  function CallError(kind, label, props) {
    this.kind = kind; // 'network' | 'http' | 'shape' | 'input'
    this.label = label;
    for (var name in props) this[name] = props[name];
  }

  /** One REST call, logged on the timeline; resolves with the parsed JSON body, rejects with a CallError. */
  function call(label, method, base, path, options) {
    options = options || {};
    var target = options.target || 'gateway';
    var entry = restRow(target, method, path);
    var started = performance.now();
    var init = { method: method, headers: options.headers || {}, cache: 'no-store', mode: 'cors', credentials: 'omit' };
    if (options.body !== undefined) init.body = JSON.stringify(options.body);
    return fetch(base + path, init).then(function (response) {
      return response.text().then(function (text) {
        var json = null;
        try { json = text ? JSON.parse(text) : null; } catch (e) { json = null; }
        var ms = performance.now() - started;
        entry.finish(response.status, ms, response.ok ? '' : errorMessage(json, text, response.statusText));
        if (!response.ok) {
          throw new CallError('http', label, { status: response.status, json: json, text: text, target: target, path: path });
        }
        return json;
      });
    }, function (error) {
      entry.finish('ERR', performance.now() - started, 'network error');
      throw new CallError('network', label, { error: error, url: base + path, target: target });
    });
  }

  function errorMessage(json, text, fallback) {
    if (json && typeof json === 'object') {
      if (typeof json.message === 'string' && json.message) return json.message;
      if (json.error && typeof json.error === 'object' && json.error.message) return json.error.message;
      if (typeof json.error === 'string' && json.error) return json.error;
      if (json.detail !== undefined) {
        return Array.isArray(json.detail)
          ? json.detail.map(function (d) { return (d.loc || []).join('.') + ': ' + d.msg; }).join('; ')
          : String(json.detail);
      }
    }
    return short(text, 160) || fallback || '';
  }

  function errorCode(json) {
    if (!json || typeof json !== 'object') return null;
    if (json.code !== undefined) return json.code;
    if (json.error && typeof json.error === 'object') return json.error.code;
    return null;
  }

  var TARGET_NAMES = { gateway: 'the gateway', petya: 'the Petya reference' };

  function explain(error) {
    var what = error.label + ' failed';
    if (error.kind === 'input') return { title: error.title, text: error.message, level: 'warn' };
    if (error.kind === 'shape') {
      return { title: what + ': unexpected answer', text: error.message };
    }
    if (error.kind === 'network') {
      return {
        title: 'Network error',
        text: what + ': could not reach ' + TARGET_NAMES[error.target] + ' at ' + error.url + ' (' +
          (error.error && error.error.message || 'fetch failed') + '). Is it running, and does it allow this ' +
          "page's origin (" + location.origin + ') through CORS?'
      };
    }
    var status = error.status;
    var message = errorMessage(error.json, error.text, '');
    // "<call> failed: <who> said “<message>”." then what to do about it.
    var said = message ? ': ' + TARGET_NAMES[error.target] + ' said “' + message + '”.' : '.';
    var code = errorCode(error.json);
    if (error.target === 'petya' && (status === 401 || status === 403)) {
      return { title: 'Service token rejected (' + status + ')', text: what + said + ' Check petyaToken in the URL fragment.' };
    }
    if (status === 401 || status === 403) {
      return { title: 'API key rejected (' + status + ')', text: what + said + ' Check the customer API key.' };
    }
    if (code === 'concurrency_limit_exceeded' || code === 10004 || /concurren/i.test(message)) {
      return {
        title: 'Session limit reached (' + status + ')',
        text: what + said + ' HeyGen allows only a few concurrent sessions: stop a session you no ' +
          'longer use, or wait a few minutes for idle ones to close, then try again.'
      };
    }
    if (status === 502 || status === 503 || status === 504) {
      return {
        title: 'Upstream unavailable (' + status + ')',
        text: what + said + ' A service behind the gateway (HeyGen, LiveAvatar or Petya) is down or too slow; try again in a moment.'
      };
    }
    if (status === 404) {
      var missing = message === 'no such route' ? ' This gateway does not serve ' + error.path + ' (an older version?).' : '';
      return { title: 'Not found (404)', text: what + said + missing };
    }
    if (status === 413) return { title: 'Too large (413)', text: what + said };
    return { title: 'Request failed (' + status + ')', text: what + said };
  }

  function report(error) {
    if (!(error instanceof CallError)) {
      console.error(error);
      error = new CallError('shape', 'The console', { message: String(error && error.message || error) });
    }
    var info = explain(error);
    showBanner(info.title, info.text, info.level);
    infoRow(info.title + ' — ' + info.text, 'err');
  }

  function need(value, label, what) {
    if (value === undefined || value === null || value === '') {
      throw new CallError('shape', label, { message: 'the answer has no ' + what + '.' });
    }
    return value;
  }

  function jsonHeaders(extra) {
    var headers = { 'Content-Type': 'application/json' };
    for (var name in extra) headers[name] = extra[name];
    return headers;
  }

  // --- transcript: the gateway's own record (GET /v1/streaming.transcript), plus what is still being spoken ---

  function refreshTranscript() {
    var session = state.session;
    clearTimeout(state.refreshTimer);
    state.refreshTimer = setTimeout(function () {
      if (!session || state.session !== session) return;
      call('streaming.transcript', 'GET', gatewayBase(),
        '/v1/streaming.transcript?session_id=' + encodeURIComponent(session.sessionId), {
          headers: { 'X-Api-Key': apiKey() }
        }).then(function (body) {
        if (state.session !== session) return;
        state.turns = ((body && body.data && body.data.transcript) || []).map(function (turn) {
          return { role: turn.role, text: turn.transcript, at: turn.absolute_timestamp, sources: turn.sources || [] };
        });
        state.pending = [];
        renderTranscript();
      }, report);
    }, TRANSCRIPT_REFRESH_MS);
  }

  function feedSocketEvent(event) {
    var kind = event.type || event.event_type;
    var text = event.message !== undefined && event.message !== null ? event.message : event.text;
    var taskId = event.task_id !== undefined && event.task_id !== null ? String(event.task_id) : '';
    if (TALKING[kind]) {
      var key = TALKING[kind] + '|' + taskId;
      var entry = state.open[key] || (state.open[key] = { role: TALKING[kind], taskId: taskId, parts: [], at: now() });
      if (typeof text === 'string') entry.parts.push(text);
      renderTranscript();
    } else if (ENDING[kind]) {
      var endKey = ENDING[kind] + '|' + taskId;
      var open = state.open[endKey];
      delete state.open[endKey];
      if (open) state.pending.push(open);
      renderTranscript();
      refreshTranscript();
    }
    if (SPEECH_ON[kind]) el.video.dataset.speaking = 'true';
    if (SPEECH_OFF[kind]) el.video.dataset.speaking = 'false';
  }

  function drainOpen() {
    Object.keys(state.open).forEach(function (key) { state.pending.push(state.open[key]); });
    state.open = {};
    renderTranscript();
    refreshTranscript();
  }

  function turnItem(role, text, meta, live) {
    var item = make('li', 'turn turn-' + role + (live ? ' live' : ''));
    item.dataset.role = role;
    item.appendChild(make('span', 'who', role === 'avatar' ? 'Avatar' : 'User'));
    var bubble = make('div', 'bubble');
    bubble.appendChild(make('span', 'text', text));
    if (meta) bubble.appendChild(make('span', 'meta', meta));
    item.appendChild(bubble);
    return item;
  }

  function renderTranscript() {
    var items = state.turns.map(function (turn) {
      return { at: turn.at, node: turnItem(turn.role, turn.text, clock(new Date(turn.at * 1000)) + ' · ' + turn.sources.join(' + ')) };
    });
    state.pending.forEach(function (entry) {
      items.push({ at: entry.at, node: turnItem(entry.role, entry.parts.join(''), 'recording…', true) });
    });
    Object.keys(state.open).forEach(function (key) {
      var entry = state.open[key];
      items.push({ at: entry.at, node: turnItem(entry.role, entry.parts.join('') + ' …', 'speaking', true) });
    });
    items.sort(function (a, b) { return a.at - b.at; }); // stable: equal times keep arrival order
    el.transcript.replaceChildren.apply(el.transcript, items.map(function (i) { return i.node; }));
    el.transcript.scrollTop = el.transcript.scrollHeight;
  }

  // --- WebSocket (HeyGen) -------------------------------------------------------------------------------------

  function socketUrl(session) {
    var base = gatewayBase().replace(/^http/i, 'ws');
    return base + '/v1/ws/streaming.chat?session_id=' + encodeURIComponent(session.sessionId) +
      '&session_token=' + encodeURIComponent(session.token) +
      '&silence_response=false&opening_text=&stt_language=en&enable_tts=true&enable_stt=false';
  }

  function openSocket(session) {
    var url = socketUrl(session);
    var ws;
    try {
      ws = new WebSocket(url);
    } catch (error) {
      showBanner('WebSocket error', 'Could not open ' + url.split('?')[0] + ': ' + error.message);
      return;
    }
    state.ws = ws;
    state.closingSocket = false;
    wsRow('connecting', url.split('?')[0]);
    ws.onopen = function () { wsRow('open', 'streaming.chat relay connected', 'ok'); };
    ws.onmessage = function (message) {
      if (state.ws !== ws) return; // a socket of an earlier session, closing
      if (typeof message.data !== 'string') {
        var size = message.data && (message.data.size || message.data.byteLength) || 0;
        wsRow('binary', size + ' bytes');
        return;
      }
      var event;
      try { event = JSON.parse(message.data); } catch (e) { wsRow('text', message.data); return; }
      if (!event || typeof event !== 'object') { wsRow('text', message.data); return; }
      var type = event.type || event.event_type || 'message';
      var text = event.message !== undefined && event.message !== null ? event.message : event.text;
      wsRow(type, typeof text === 'string' ? '“' + text.trim() + '”' : (event.task_id ? 'task ' + short(event.task_id, 14) : ''));
      feedSocketEvent(event);
    };
    ws.onclose = function (event) {
      var expected = state.closingSocket || state.phase === 'stopping' || state.phase === 'stopped';
      wsRow('close', event.code + (event.reason ? ' ' + event.reason : ''), expected || event.code === 1000 ? '' : 'err');
      if (state.session !== session) return; // an earlier session's socket: nothing of it is shown any more
      if (state.ws === ws) state.ws = null;
      el.video.dataset.speaking = 'false';
      drainOpen();
      if (!expected && state.session === session && (state.phase === 'created' || state.phase === 'started' || state.phase === 'starting')) {
        if (event.code === 1006 && !event.wasClean) {
          showBanner('WebSocket failed (' + event.code + ')', 'The streaming.chat socket could not connect or dropped. ' +
            "Does the gateway's CORS_ORIGINS allow " + location.origin + '? Is the session still alive?');
        } else {
          showBanner('Socket closed (' + event.code + ')', 'The gateway closed the streaming.chat socket' +
            (event.reason ? ': “' + event.reason + '”' : '') + '. Stop the session and create a new one.', 'warn');
        }
      }
      render();
    };
  }

  function closeSocket(waitMs) {
    var ws = state.ws;
    if (!ws) return Promise.resolve();
    state.closingSocket = true;
    return new Promise(function (resolve) {
      var done = false;
      function finish() {
        if (done) return;
        done = true;
        if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) ws.close(1000, 'demo stopped');
        resolve();
      }
      ws.addEventListener('close', finish);
      setTimeout(finish, waitMs || 0);
    });
  }

  // --- the two providers --------------------------------------------------------------------------------------

  var heygen = {
    create: function (conversationId) {
      var key = apiKey(), base = gatewayBase(), session;
      return call('streaming.create_token', 'POST', base, '/v1/streaming.create_token', {
        headers: jsonHeaders({ 'X-Api-Key': key })
      }).then(function (tokenBody) {
        var token = need(tokenBody && tokenBody.data && tokenBody.data.token, 'streaming.create_token', 'data.token');
        return call('streaming.new', 'POST', base, '/v1/streaming.new', {
          headers: jsonHeaders({ Accept: 'application/json', 'X-Api-Key': key }),
          body: { quality: 'medium', version: 'v2', conversation_id: conversationId }
        }).then(function (body) {
          var data = body && body.data || {};
          session = {
            provider: 'heygen', conversationId: conversationId, token: token,
            sessionId: need(data.session_id, 'streaming.new', 'data.session_id'),
            intro: data.intro, livekitUrl: data.url, livekitToken: data.access_token
          };
          return session;
        });
      });
    },
    afterCreate: function (session) { openSocket(session); },
    start: function (session) {
      return call('streaming.start', 'POST', gatewayBase(), '/v1/streaming.start', {
        headers: jsonHeaders({ 'X-api-key': apiKey() }), // the plugin's exact spelling of the header
        body: { session_id: session.sessionId }
      });
    },
    say: function (session, text, asUser) {
      var taskType = asUser ? 'talk' : 'repeat';
      return call('streaming.task (' + taskType + ')', 'POST', gatewayBase(), '/v1/streaming.task', {
        headers: jsonHeaders({ 'X-Api-Key': apiKey() }),
        body: { session_id: session.sessionId, text: text, task_type: taskType }
      }).then(refreshTranscript);
    },
    stop: function (session) {
      return call('streaming.stop', 'POST', gatewayBase(), '/v1/streaming.stop', {
        headers: jsonHeaders({ 'X-Api-Key': apiKey() }),
        body: { session_id: session.sessionId }
      });
    }
  };

  var liveavatar = {
    create: function (conversationId) {
      return call('sessions/token', 'POST', gatewayBase(), '/v1/sessions/token', {
        headers: jsonHeaders({ 'X-Api-Key': apiKey() }),
        body: { conversation_id: conversationId }
      }).then(function (body) {
        var data = body && body.data || {};
        return {
          provider: 'liveavatar', conversationId: conversationId,
          sessionId: need(data.session_id, 'sessions/token', 'data.session_id'),
          token: need(data.session_token, 'sessions/token', 'data.session_token')
        };
      });
    },
    afterCreate: function () {},
    start: function (session) {
      return call('sessions/start', 'POST', gatewayBase(), '/v1/sessions/start', {
        headers: { Authorization: 'Bearer ' + session.token } // no body
      });
    },
    say: function (session, text, asUser) {
      if (state.room) { // as the plugin does: a command on agent-control; the room's transcript reaches Petya
        var command = { event_id: randomHex(8), event_type: asUser ? 'avatar.speak_response' : 'avatar.speak_text',
                        text: text };
        roomRow('publish ' + AGENT_CONTROL, command.event_type + ' “' + text + '”');
        return state.room.publish(AGENT_CONTROL, command);
      }
      var path = asUser ? '/v1/streaming.user_message' : '/v1/streaming.avatar_message';
      return call(path.slice(4), 'POST', gatewayBase(), path, {
        headers: jsonHeaders({ 'X-Api-Key': apiKey() }),
        body: { session_id: session.sessionId, text: text }
      }).then(refreshTranscript);
    },
    stop: function (session) {
      return call('sessions/stop', 'POST', gatewayBase(), '/v1/sessions/stop', {
        headers: jsonHeaders({ 'X-Api-Key': apiKey() }),
        body: { session_id: session.sessionId }
      });
    }
  };

  var PROVIDERS = { heygen: heygen, liveavatar: liveavatar };

  // --- actions ------------------------------------------------------------------------------------------------

  function checkInputs() {
    if (!/^https?:\/\/[^/]+/i.test(gatewayBase())) {
      throw new CallError('input', 'Settings', { title: 'Gateway URL needed', message: 'Enter the gateway URL (http:// or https://).' });
    }
    if (!apiKey()) {
      throw new CallError('input', 'Settings', { title: 'API key needed', message: 'Enter the customer API key (or open /demo#key=…).' });
    }
  }

  function run(action) {
    if (state.busy) return Promise.resolve();
    state.busy = true;
    hideBanner();
    render();
    return Promise.resolve().then(action).catch(report).then(function () {
      state.busy = false;
      render();
    });
  }

  function onNew() {
    return run(function () {
      checkInputs();
      var name = provider();
      var conversationId = newConversationId();
      resetSession();
      state.phase = 'creating';
      infoRow('New ' + (name === 'heygen' ? 'HeyGen' : 'LiveAvatar') + ' session, conversation ' + conversationId, 'sep');
      el.conversationId.textContent = conversationId;
      render();
      return PROVIDERS[name].create(conversationId).then(function (session) {
        state.session = session;
        state.phase = 'created';
        el.sessionId.textContent = session.sessionId;
        showIntro(session.intro);
        showLivekit(session.livekitUrl);
        PROVIDERS[name].afterCreate(session);
      }, function (error) {
        state.phase = 'idle';
        throw error;
      });
    });
  }

  function onStart() {
    return run(function () {
      var session = state.session;
      var impl = PROVIDERS[session.provider];
      state.phase = 'starting';
      render();
      return impl.start(session).then(function (body) {
        state.phase = 'started';
        var data = body && body.data || {};
        if (data.intro !== undefined) { session.intro = data.intro; showIntro(data.intro); }
        if (data.livekit_url) { session.livekitUrl = data.livekit_url; showLivekit(data.livekit_url); }
        if (data.livekit_client_token) session.livekitToken = data.livekit_client_token;
        render();
        return joinRoom(session).then(function () {
          return impl.say(session, session.intro || DEFAULT_INTRO, false);
        });
      }, function (error) {
        state.phase = 'created';
        throw error;
      });
    });
  }

  function onSay(asUser) {
    var text = el.taskText.value.trim();
    if (!text) return Promise.resolve();
    return run(function () {
      var session = state.session;
      return PROVIDERS[session.provider].say(session, text, asUser).then(function () {
        if (el.taskText.value.trim() === text) el.taskText.value = '';
        el.taskText.focus();
      });
    });
  }

  function onStop() {
    return run(function () {
      var session = state.session;
      var before = state.phase;
      state.phase = 'stopping';
      render();
      return PROVIDERS[session.provider].stop(session).then(function () {
        state.phase = 'stopped';
        leaveRoom();
        return closeSocket(1000).then(function () { pollPetya(session.conversationId); });
      }, function (error) {
        // 404: the session had already ended (idle timeout, socket gone): it is over either way.
        state.phase = error && error.status === 404 ? 'stopped' : before;
        if (state.phase === 'stopped') closeSocket(0).then(function () { pollPetya(session.conversationId); });
        throw error;
      });
    });
  }

  function resetSession() {
    if (state.ws) { state.closingSocket = true; state.ws.close(1000, 'demo new session'); state.ws = null; }
    leaveRoom();
    state.spoken = {};
    state.session = null;
    state.turns = [];
    state.open = {};
    state.pending = [];
    state.petyaRun += 1;
    el.sessionId.textContent = '—';
    el.conversationId.textContent = '—';
    showIntro(null);
    showLivekit(null);
    el.video.dataset.speaking = 'false';
    renderTranscript();
    setPetya('idle', 'Waiting for Stop: the gateway hands the transcript to Petya when the session ends.', null);
  }

  // --- the LiveKit room (demo-room.js): the avatar's video, and its events where the real services put them ------

  function joinRoom(session) {
    if (!session.livekitUrl || !session.livekitToken) return Promise.resolve();
    if (!window.DemoRoom || !DemoRoom.available()) {
      el.videoNote.textContent = 'livekit-client is not installed (make demo-assets): no video.';
      infoRow('livekit-client is not installed (make demo-assets): the console cannot join the avatar\'s room.');
      return Promise.resolve();
    }
    var room = new DemoRoom(el.video, function (kind, text, detail) {
      if (state.room !== room) return;
      if (kind === 'data') onRoomData(session, text, detail);
      else roomRow('room', text);
    });
    state.room = room;
    roomRow('connecting', session.livekitUrl);
    return room.join(session.livekitUrl, session.livekitToken).catch(function (error) {
      if (state.room === room) state.room = null;
      roomRow('error', 'could not join the room: ' + (error && error.message || error), 'err');
    });
  }

  function leaveRoom() {
    var room = state.room;
    state.room = null;
    if (room) room.leave();
  }

  function onRoomData(session, from, data) {
    var event = data && typeof data === 'object' ? data : { type: 'message', message: String(data) };
    var type = event.type || event.event_type || 'message';
    var text = event.message !== undefined && event.message !== null ? event.message : event.text;
    roomRow(type, from + (typeof text === 'string' ? ' “' + text.trim() + '”' : ''));
    if (session.provider === 'liveavatar') {
      onLiveAvatarEvent(session, type, event, text);
      return;
    }
    feedSocketEvent(event);
    reportAvatarWords(session, event);
  }

  // LiveAvatar's events on agent-response, shown as HeyGen's are (grouped by the command they answer). What was
  // said is also reported to the gateway, as the plugin may (POST /v1/streaming.avatar_message): its live record shows it, and the room's
  // own transcript, which LiveAvatar hands over at the end, holds the same turns once.
  function onLiveAvatarEvent(session, type, event, text) {
    var taskId = event.source_event_id || event.event_id;
    if (type === 'user.transcription') {
      feedSocketEvent({ type: 'user_talking_message', task_id: taskId, message: text });
      feedSocketEvent({ type: 'user_end_message', task_id: taskId });
      reportSaid(session, 'user', text);
    } else if (LIVEAVATAR_EVENTS[type]) {
      var chunk = type === 'avatar.transcription.chunk' && typeof text === 'string' ? text + ' ' : undefined; // a word
      feedSocketEvent({ type: LIVEAVATAR_EVENTS[type], task_id: taskId, message: chunk });
      if (type === 'avatar.transcription') reportSaid(session, 'avatar', text);
    }
  }

  function reportSaid(session, role, text) {
    if (state.session !== session || typeof text !== 'string' || !text.trim()) return;
    var path = role === 'avatar' ? '/v1/streaming.avatar_message' : '/v1/streaming.user_message';
    call(path.slice(4), 'POST', gatewayBase(), path, {
      headers: jsonHeaders({ 'X-Api-Key': apiKey() }),
      body: { session_id: session.sessionId, text: text.trim() }
    }).then(refreshTranscript, report);
  }

  // HeyGen v2 speaks in the room, where the gateway does not listen: the console reports what the avatar said, as
  // the plugin may (the gateway keeps a turn it already has once).
  function reportAvatarWords(session, event) {
    var taskId = String(event.task_id || '');
    if (event.type === 'avatar_talking_message' && typeof event.message === 'string') {
      state.spoken[taskId] = (state.spoken[taskId] || '') + event.message;
    } else if (event.type === 'avatar_end_message' && state.spoken[taskId]) {
      var text = state.spoken[taskId].trim();
      delete state.spoken[taskId];
      reportSaid(session, 'avatar', text);
    }
  }

  function showIntro(intro) {
    el.introText.textContent = intro ? intro : (intro === null ? '—' : DEFAULT_INTRO + ' (default)');
  }

  function showLivekit(url) {
    el.livekitUrl.textContent = url ? 'LiveKit: ' + url : '';
  }

  // --- Petya reference: the transcript it received, the avatar config -----------------------------------------

  function petyaReady() { return petyaBase() && el.petyaToken.value.trim(); }

  function petyaHeaders(extra) {
    var headers = { Authorization: 'Bearer ' + el.petyaToken.value.trim() };
    for (var name in extra) headers[name] = extra[name];
    return headers;
  }

  function setPetya(stateName, text, conversation) {
    el.petya.dataset.state = stateName;
    var status = make('p', 'petya-status' + (stateName === 'received' ? '' : ' muted'), text);
    var list = make('ol', 'turns');
    if (conversation) {
      var turns = conversation.transcript || [];
      turns.forEach(function (turn) {
        var at = turn.absolute_timestamp || turn.timestamp;
        list.appendChild(turnItem(turn.role, turn.transcript, at ? clock(new Date(at * 1000)) : ''));
      });
      var mine = state.turns.map(function (t) { return t.role + ':' + normalize(t.text); }).join('|');
      var theirs = turns.map(function (t) { return t.role + ':' + normalize(t.transcript); }).join('|');
      var check = make('span', 'match ' + (mine === theirs ? 'ok' : 'warn'),
        mine === theirs ? 'matches the live transcript' : 'differs from the live transcript');
      status.appendChild(document.createTextNode(' '));
      status.appendChild(check);
    }
    el.petya.replaceChildren(status, list);
  }

  function pollPetya(conversationId) {
    var run = ++state.petyaRun;
    if (!petyaReady()) {
      setPetya('unavailable', 'Set petya=<base url> and petyaToken=<service token> in the URL fragment to see it.', null);
      return;
    }
    var attempt = 0;
    setPetya('waiting', 'Waiting for Petya to receive conversation ' + conversationId + '…', null);
    function next() {
      if (run !== state.petyaRun) return;
      if (attempt >= PETYA_POLL_DELAYS.length) {
        setPetya('missing', 'Petya has not received conversation ' + conversationId + ' yet (the gateway retries ' +
          'failed hand-offs; see its logs). Use “Check again”.', null);
        return;
      }
      setTimeout(function () {
        if (run !== state.petyaRun) return;
        attempt += 1;
        call('Petya conversation', 'GET', petyaBase(), '/api/v1/avatar/conversations/' + encodeURIComponent(conversationId), {
          headers: petyaHeaders(), target: 'petya'
        }).then(function (conversation) {
          if (run !== state.petyaRun) return;
          var final = conversation && conversation.status !== 'active';
          setPetya('received', 'Conversation ' + conversationId + ' · status ' + (conversation && conversation.status) +
            ' · ' + ((conversation && conversation.transcript) || []).length + ' turns.', conversation);
          if (!final) next();
        }, function (error) {
          if (run !== state.petyaRun) return;
          if (error.kind === 'http' && error.status === 404) return next();
          report(error);
          setPetya('error', 'Could not read it from Petya (see the message above).', null);
        });
      }, PETYA_POLL_DELAYS[attempt]);
    }
    next();
  }

  function configFields() {
    var values = {};
    Object.keys(el.cfg).forEach(function (name) {
      var value = el.cfg[name].value.trim();
      values[name] = value === '' && name !== 'avatarId' && name !== 'language' ? null : value;
    });
    return values;
  }

  function fillConfig(config) {
    Object.keys(el.cfg).forEach(function (name) {
      var value = config && config[name];
      el.cfg[name].value = value === undefined || value === null ? '' : String(value);
    });
    showStoredProvider(config ? config.provider || null : undefined);
  }

  // Who serves HeyGen's contract for this customer: the config's `provider`, switched with a PUT of that field alone.
  var PROVIDER_NAMES = { heygen: 'HeyGen', liveavatar: 'LiveAvatar' };

  function showStoredProvider(value) {
    state.storedProvider = value;
    el.cfgProvider.querySelectorAll('input').forEach(function (input) {
      input.checked = value !== undefined && input.value === (value || '');
    });
    el.cfgProvider.dataset.stored = value === undefined ? '' : (value || 'default');
    el.cfgProviderStatus.textContent = value === undefined ? ''
      : value ? 'Petya says: provider “' + value + '” — ' + PROVIDER_NAMES[value] + ' serves new sessions.'
        : 'Petya says: no provider — the gateway\'s HEYGEN_CONTRACT_PROVIDER decides.';
  }

  function onProviderSwitch() {
    var checked = el.cfgProvider.querySelector('input:checked');
    var value = checked && checked.value ? checked.value : null;
    if (!petyaReady() || !apiKey()) {
      showStoredProvider(state.storedProvider);
      el.cfgProviderStatus.textContent = 'Set the customer API key, the Petya URL and service token first.';
      return Promise.resolve();
    }
    el.cfgProviderStatus.textContent = 'Saving…';
    el.cfgProvider.querySelectorAll('input').forEach(function (input) { input.disabled = true; });
    return call('Switching the provider', 'PUT', petyaBase(), '/api/v1/admin/accounts/config', {
      headers: petyaHeaders({ 'X-Api-Key': apiKey(), 'Content-Type': 'application/json' }), target: 'petya',
      body: { provider: value }
    }).then(function (config) {
      showStoredProvider(config && config.provider || null);
    }, function (error) {
      showStoredProvider(state.storedProvider);
      report(error);
    }).then(function () {
      el.cfgProvider.querySelectorAll('input').forEach(function (input) { input.disabled = false; });
    });
  }

  function configCall(method) {
    if (!petyaReady()) {
      el.configStatus.textContent = 'Set the Petya URL and service token to load it.';
      return Promise.resolve();
    }
    if (!apiKey()) {
      el.configStatus.textContent = 'Enter the customer API key to load it.';
      return Promise.resolve();
    }
    el.configStatus.textContent = method === 'GET' ? 'Loading…' : 'Saving…';
    el.btnLoadConfig.disabled = el.btnSaveConfig.disabled = true;
    var options = { headers: petyaHeaders({ 'X-Api-Key': apiKey() }), target: 'petya' };
    if (method === 'PUT') {
      options.headers['Content-Type'] = 'application/json';
      options.body = configFields();
    }
    return call(method === 'GET' ? 'Loading the avatar config' : 'Saving the avatar config', method, petyaBase(),
      '/api/v1/admin/accounts/config', options).then(function (config) {
      fillConfig(config);
      el.configStatus.textContent = (method === 'GET' ? 'Loaded ' : 'Saved ') + clock().slice(0, 8);
    }, function (error) {
      if (error.kind === 'http' && error.status === 404) {
        fillConfig(null);
        el.configStatus.textContent = 'Petya has no account for this API key.';
        return;
      }
      el.configStatus.textContent = 'Failed (see the message above)';
      report(error);
    }).then(function () {
      el.btnLoadConfig.disabled = el.btnSaveConfig.disabled = false;
    });
  }

  // --- rendering ----------------------------------------------------------------------------------------------

  var HINTS = {
    idle: 'Click New to create a session.',
    creating: 'Creating the session…',
    created: 'Click Start to start streaming; the avatar greets you with the intro.',
    starting: 'Starting…',
    started: 'Type something: Repeat makes the avatar say it, Talk says it as the user and the avatar answers.',
    stopping: 'Stopping…',
    stopped: 'Session stopped. Click New for another one.'
  };

  function render() {
    var phase = state.phase, busy = state.busy;
    var live = phase === 'created' || phase === 'started';
    var hasText = el.taskText.value.trim() !== '';
    el.btnNew.disabled = busy || live || phase === 'stopping';
    el.btnStart.disabled = busy || phase !== 'created';
    el.btnRepeat.disabled = el.btnTalk.disabled = busy || phase !== 'started' || !hasText;
    el.taskText.disabled = phase !== 'started';
    el.btnStop.disabled = busy || !live;
    var locked = busy || live || phase === 'stopping';
    el.provider.querySelectorAll('input').forEach(function (input) { input.disabled = locked; });
    el.apiKey.disabled = el.gatewayUrl.disabled = locked;
    el.phase.dataset.phase = phase;
    el.phase.textContent = PHASE_LABELS[phase] + (state.session ? ' · ' + (state.session.provider === 'heygen' ? 'HeyGen' : 'LiveAvatar') : '');
    el.hint.textContent = phase === 'started' && state.session && state.session.provider === 'liveavatar'
      ? (state.room ? 'LiveAvatar: Repeat and Talk go to the avatar as agent-control commands in its room.'
                    : 'LiveAvatar: Repeat reports the text as said by the avatar, Talk as said by the user (no room joined).')
      : HINTS[phase];
    document.body.dataset.phase = phase;
    document.body.dataset.busy = busy ? 'true' : 'false';
  }

  // --- wiring -------------------------------------------------------------------------------------------------

  el.btnNew.addEventListener('click', onNew);
  el.btnStart.addEventListener('click', onStart);
  el.btnRepeat.addEventListener('click', function () { onSay(false); });
  el.btnTalk.addEventListener('click', function () { onSay(true); });
  el.btnStop.addEventListener('click', onStop);
  el.taskText.addEventListener('input', render);
  el.taskText.addEventListener('keydown', function (event) {
    if (event.key === 'Enter' && !event.isComposing && !el.btnTalk.disabled) {
      event.preventDefault();
      onSay(!(event.ctrlKey || event.metaKey)); // Enter: Talk; Ctrl/Cmd+Enter: Repeat
    }
  });
  el.bannerClose.addEventListener('click', hideBanner);
  el.btnClearTimeline.addEventListener('click', function () {
    el.timeline.replaceChildren();
    state.timelineCount = 0;
    el.timelineCount.textContent = '';
  });
  el.timeline.addEventListener('scroll', function () {
    state.stickTimeline = el.timeline.scrollHeight - el.timeline.scrollTop - el.timeline.clientHeight < 40;
  });
  el.btnPetyaRefresh.addEventListener('click', function () {
    var id = state.session ? state.session.conversationId : null;
    if (id) pollPetya(id);
  });
  el.btnLoadConfig.addEventListener('click', function () { configCall('GET'); });
  el.btnSaveConfig.addEventListener('click', function () { configCall('PUT'); });
  el.cfgProvider.addEventListener('change', onProviderSwitch);
  el.provider.addEventListener('change', render);
  window.addEventListener('hashchange', function () {
    if (state.phase !== 'created' && state.phase !== 'started') { applyFragment(); render(); }
  });
  window.addEventListener('beforeunload', function () {
    if (state.ws) { state.closingSocket = true; state.ws.close(1000, 'page closed'); }
  });

  applyFragment();
  resetSession();
  render();
  if (petyaReady() && apiKey()) configCall('GET');
})();
