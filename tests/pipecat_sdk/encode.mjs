// pipecat frames made by @heygen/streaming-avatar 2.1.0's own code (tests/unit/test_pipecat_frames.py runs this):
// text through the public speak() with its defaults (talk + async: a TextFrame on the WebSocket, no REST call),
// audio through the WebSocket voice chat's microphone callback. Only the browser APIs they touch are stubbed.
// stdin: {"texts": [string...], "samples": [[float in -1..1, ...] per microphone chunk]}
// stdout: {"text": [hex of the frame sent, per text], "audio": [hex of the frame sent, per chunk]}
import { readFileSync } from 'node:fs';

const request = JSON.parse(readFileSync(0, 'utf8'));

const processor = { connect() {}, onaudioprocess: null }; // the ScriptProcessorNode the SDK feeds the mic through
class AudioContext {
  constructor() { this.destination = {}; }
  createMediaStreamSource() { return { connect() {} }; }
  createScriptProcessor() { return processor; }
}
globalThis.window = Object.assign(globalThis.window || globalThis, { AudioContext });
Object.defineProperty(globalThis, 'navigator', {
  value: { mediaDevices: { getUserMedia: async () => ({ getTracks: () => [] }) }, userAgent: 'node' },
  configurable: true,
});

// The ES module bundle: the package's "main" (lib/index.cjs.js) is CommonJS inside a "type": "module" package,
// which node refuses to load.
const { default: StreamingAvatar, VoiceChatTransport } = await import('@heygen/streaming-avatar/lib/index.esm.js');

const sent = [];
const avatar = new StreamingAvatar({ token: 'unused' });
avatar.webSocket = { send: (bytes) => sent.push(Buffer.from(bytes).toString('hex')), addEventListener() {} };
await avatar.loadAudioRawFrame(); // what createStartAvatar does once the socket is open (pipecat.json -> Frame)

const text = [];
for (const words of request.texts) {
  await avatar.speak({ text: words });
  text.push(sent.pop());
}

avatar.initVoiceChat(VoiceChatTransport.WEBSOCKET);
avatar.voiceChat.startVoiceChat({ config: { defaultMuted: false } }); // ends with a 2 s sleep: not awaited
while (!processor.onaudioprocess) await new Promise((resolve) => setTimeout(resolve, 1));
const audio = [];
for (const samples of request.samples) {
  processor.onaudioprocess({ inputBuffer: { getChannelData: () => Float32Array.from(samples) } });
  audio.push(sent.pop());
}
process.stdout.write(JSON.stringify({ text, audio }));
process.exit(0);
