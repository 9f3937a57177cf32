// The two official SDKs, unchanged, exposed on `window` for tests/browser/test_sdk_browser.py to drive over CDP.
import StreamingAvatar, * as heygen from "@heygen/streaming-avatar";
import * as liveavatar from "@heygen/liveavatar-web-sdk";

window.HeyGenSDK = { ...heygen, StreamingAvatar };
window.LiveAvatarSDK = { ...liveavatar };

// What a call gave: its value, or the error it threw, as plain JSON for Runtime.evaluate(returnByValue).
window.outcome = async (call) => {
  try {
    const value = await call();
    return { ok: true, value: value === undefined ? null : JSON.parse(JSON.stringify(value)) };
  } catch (error) {
    const described = { name: error?.name ?? error?.constructor?.name ?? typeof error, message: String(error?.message ?? error) };
    for (const field of ["status", "responseText", "errorCode", "type"]) {
      if (error?.[field] !== undefined) described[field] = error[field];
    }
    return { ok: false, error: described };
  }
};

// livekit-client itself, for tests/browser/test_livekit_browser.py against the sandbox's room server: 2.15.7 (what
// the LiveAvatar SDK uses) and 2.11.3 (what HeyGen's SDK 2.1.0 pins for itself), each as the SDK would load it.
import * as livekit from "livekit-client";
import * as livekit211 from "livekit-client-2.11";

window.LivekitClients = { "2.15.7": { ...livekit }, "2.11.3": { ...livekit211 } };
