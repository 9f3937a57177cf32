/* The demo console's LiveKit room: joins the avatar's room with livekit-client (vendor/livekit-client.umd.js, pinned
   in vendor/package.json and installed by `make demo-assets`), shows the avatar's video and plays its audio, tells
   the console what happens in the room (participants, tracks, data), and publishes data as a plugin does (LiveAvatar's
   commands on topic `agent-control`). Without livekit-client on the page, `DemoRoom.available()` is false and the
   console keeps its placeholder. */
(function () {
  'use strict';

  function DemoRoom(box, onEvent) {
    this.box = box; // the element the <video> goes into
    this.onEvent = onEvent; // onEvent(kind, text, detail): kind is 'room' or 'data'
    this.room = null;
    this.video = null;
  }

  DemoRoom.available = function () { return typeof window.LivekitClient !== 'undefined'; };

  DemoRoom.prototype.join = function (url, token) {
    var LK = window.LivekitClient, self = this;
    var room = this.room = new LK.Room({ adaptiveStream: false, dynacast: false });
    room.on(LK.RoomEvent.ParticipantConnected, function (p) { self.onEvent('room', p.identity + ' joined'); });
    room.on(LK.RoomEvent.ParticipantDisconnected, function (p) { self.onEvent('room', p.identity + ' left'); });
    room.on(LK.RoomEvent.TrackSubscribed, function (track, publication, participant) {
      self.onEvent('room', participant.identity + "'s " + track.kind + ' track subscribed');
      if (track.kind === 'video') self.showVideo(track);
      else if (track.kind === 'audio') self.box.appendChild(track.attach()); // plays after the user's click
    });
    room.on(LK.RoomEvent.DataReceived, function (payload, participant, kind, topic) {
      var text = new TextDecoder().decode(payload), data = text;
      try { data = JSON.parse(text); } catch (e) { /* not JSON: shown as text */ }
      self.onEvent('data', (participant ? participant.identity : 'server') + (topic ? ' on ' + topic : ''), data);
    });
    room.on(LK.RoomEvent.Disconnected, function (reason) {
      self.onEvent('room', 'left the room' + (reason !== undefined ? ' (' + reason + ')' : ''));
      self.hideVideo();
    });
    return room.connect(url, token, { autoSubscribe: true }).then(function () {
      self.onEvent('room', 'joined ' + room.name + ' as ' + room.localParticipant.identity);
    });
  };

  DemoRoom.prototype.publish = function (topic, message) {
    var data = new TextEncoder().encode(JSON.stringify(message));
    return this.room.localParticipant.publishData(data, { reliable: true, topic: topic });
  };

  DemoRoom.prototype.showVideo = function (track) {
    this.hideVideo();
    var video = this.video = track.attach();
    video.muted = true; // the audio track plays on its own element
    video.playsInline = true;
    video.className = 'avatar-video';
    this.box.dataset.live = 'true';
    this.box.insertBefore(video, this.box.firstChild);
  };

  DemoRoom.prototype.hideVideo = function () {
    if (this.video) this.video.remove();
    this.video = null;
    delete this.box.dataset.live;
  };

  DemoRoom.prototype.leave = function () {
    var room = this.room;
    this.room = null;
    return room ? room.disconnect() : Promise.resolve();
  };

  window.DemoRoom = DemoRoom;
})();
