"""The private and undocumented tornado names the gateway relies on (clients/tornado_compat.py) still exist, with the
signatures its hooks call, and no other production module names them: a tornado upgrade fails here, in one place."""
import inspect
import pathlib
import re

from tornado import http1connection, iostream, websocket

from clients import tornado_compat

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent  # the repository
PRODUCTION = ["server.py", "conf", "domain", "observability", "models", "clients", "services", "relay", "handlers"]


def test_every_name_the_gateway_relies_on_is_still_there():
    assert tornado_compat.missing() == []


def test_instance_attributes_are_still_set_where_tornado_sets_them():
    """Attributes set on an instance are not on the class: each must still be assigned in its class's code."""
    classes = {"WebSocketProtocol13": websocket.WebSocketProtocol13, "IOStream": iostream.IOStream,
               "WebSocketClientConnection": websocket.WebSocketClientConnection,
               "HTTP1Connection": http1connection.HTTP1Connection}
    for class_name, attribute in tornado_compat.ATTRIBUTES:
        source = "".join(inspect.getsource(kind) for kind in classes[class_name].__mro__
                         if kind.__module__.startswith("tornado."))
        assert re.search(rf"self\.{attribute}\b[^=\n]*=", source), f"{class_name}.{attribute}"


def test_missing_names_are_reported():
    """missing() is not a constant: a name tornado lacks is listed (and a changed signature)."""
    original, names = tornado_compat.NAMES, tornado_compat.SIGNATURES
    try:
        tornado_compat.NAMES = (*original, (websocket, "_no_such_name", "test"))
        tornado_compat.SIGNATURES = {**names, (websocket.WebSocketProtocol13, "_abort"): ("self", "now")}
        assert tornado_compat.missing() == ["tornado.websocket._no_such_name",
                                            "WebSocketProtocol13._abort('self', 'now') (signature changed)"]
    finally:
        tornado_compat.NAMES, tornado_compat.SIGNATURES = original, names


def test_no_other_production_module_names_a_private_tornado_name():
    private = {name for _, name, _ in tornado_compat.NAMES if name.startswith("_")}
    private |= {name for _, name in tornado_compat.ATTRIBUTES if name.startswith("_") and len(name) > 7}
    files = [path for entry in PRODUCTION for path in
             ([ROOT / entry] if entry.endswith(".py") else (ROOT / entry).rglob("*.py"))]
    assert len(files) > 40
    for path in files:
        if path.name == "tornado_compat.py":
            continue
        text = path.read_text()
        used = [name for name in private if re.search(rf"\b{re.escape(name)}\b", text)]
        assert not used, f"{path.relative_to(ROOT)} names {used}: go through clients/tornado_compat.py"
