"""The private and undocumented tornado names the gateway relies on (clients/tornado_compat.py) still exist, with the
signatures its hooks call, and no other production module names them: a tornado upgrade fails here, in one place."""
import inspect
import pathlib
import re
import sys

from tornado import http1connection, iostream, web, websocket

from clients import tornado_compat

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent  # the repository
PRODUCTION = ["server.py", "conf", "domain", "observability", "models", "clients", "services", "relay", "handlers"]


def test_every_name_the_gateway_relies_on_is_still_there():
    assert tornado_compat.missing() == []


def test_instance_attributes_are_still_set_where_tornado_sets_them():
    """Attributes set on an instance are not on the class: each must still be assigned in its class's code."""
    classes = {"WebSocketProtocol13": websocket.WebSocketProtocol13, "IOStream": iostream.IOStream,
               "WebSocketClientConnection": websocket.WebSocketClientConnection,
               "HTTP1Connection": http1connection.HTTP1Connection, "RequestHandler": web.RequestHandler}
    for class_name, attribute in tornado_compat.ATTRIBUTES:
        assert re.search(rf"self\.{attribute}\b[^=\n]*=", tornado_source(classes[class_name])), \
            f"{class_name}.{attribute}"


def tornado_source(cls):
    return "".join(inspect.getsource(kind) for kind in cls.__mro__ if kind.__module__.startswith("tornado."))


def test_the_shared_keys_are_still_the_attributes_tornado_sets():
    """Each name share_keys() is given for a class is still an attribute tornado assigns on its instances (a
    WebSocketHandler's last seven: the methods it disables at the upgrade), at most 29 of them (CPython's table holds
    30 names, one taken by the throwaway instance). tests/gateway/test_relay_memory.py checks there are no others."""
    disabled = inspect.getsource(websocket.WebSocketHandler._detach_stream)
    for cls, keys in ((websocket.WebSocketHandler, tornado_compat.HANDLER_KEYS),
                      (websocket.WebSocketProtocol13, tornado_compat.PROTOCOL_KEYS),
                      (websocket.WebSocketClientConnection, tornado_compat.CONNECTION_KEYS)):
        assert len(keys) == len(set(keys)) <= 29, cls.__name__
        source = tornado_source(cls)
        for key in keys:
            assert re.search(rf"self\.{key}\b[^=\n]*=", source) or f'"{key}"' in disabled, f"{cls.__name__}.{key}"


def test_instances_of_a_class_with_shared_keys_stay_small_however_late_they_set_them():
    """Made all at once, before any sets its attributes (sockets opening concurrently), each keeps its 29
    attributes in the class's shared table: a few hundred bytes, not a dict of its own (1584 on CPython 3.11)."""
    names = [f"attribute_{i}" for i in range(29)]

    class Late:
        pass

    tornado_compat.share_keys(Late, names)
    made = [Late() for _ in range(40)]
    for instance in made:
        for name in names:
            setattr(instance, name, name)
    assert all(instance.attribute_28 == "attribute_28" for instance in made)
    assert max(sys.getsizeof(vars(instance)) for instance in made) < 600


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
