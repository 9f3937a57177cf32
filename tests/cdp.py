"""A deliberately small Chrome DevTools Protocol driver for the browser tests: tornado's websocket_connect, one
command at a time, events kept as they arrive."""
import asyncio
import json


class CDPError(AssertionError):
    pass


class Tab:
    """One browser tab over CDP: commands run one at a time; events are kept in `events`."""

    default_timeout = 20

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0
        self.events = []  # (method, params), oldest first

    async def send(self, method, timeout=None, **params):
        self.next_id += 1
        command_id = self.next_id
        await self.ws.write_message(json.dumps({"id": command_id, "method": method, "params": params}))
        while True:
            message = await asyncio.wait_for(self.ws.read_message(), timeout or self.default_timeout)
            if message is None:
                raise CDPError(f"DevTools socket closed during {method}")
            data = json.loads(message)
            if "method" in data:
                self.events.append((data["method"], data.get("params", {})))
            elif data.get("id") == command_id:
                if "error" in data:
                    raise CDPError(f"{method}: {data['error']}")
                return data.get("result", {})

    async def js(self, expression, timeout=None):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.send("Runtime.evaluate", timeout=timeout, expression=expression, returnByValue=True,
                                 awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CDPError(f"{expression!r} threw: {details.get('exception', {}).get('description') or details}")
        return result["result"].get("value")
