"""The isolation of Python's global random (tests/helpers/random_isolation.py): the libraries that drew from it draw
from generators of their own, the table still matches the installed libraries, a room with media and monitored MongoDB
commands leave the global state as it was, hypothesis generates undisturbed beside them, and the guard catches a
test that draws."""
import ast
import asyncio
import gc
import importlib
import importlib.util
import pathlib
import random
import threading
import time
import types

import pymongo
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit import rtc
from pymongo import monitoring

from sandbox.avatar import Avatar
from sandbox.livekit import RoomServer
from tests.helpers import random_isolation
from tests.helpers.random_isolation import GENERATORS, LIBRARIES, PATCHED, GlobalRandomDrawn, GlobalRandomGuard
from tests.helpers.rooms import SdkRoom, first_video_frames, until

# The module-level functions of `random`: methods of its global instance (seed and setstate too: they change it).
GLOBAL_METHODS = {name for name in random.__all__ if name[0].islower() and callable(getattr(random.Random, name, None))}


def test_each_patched_module_draws_from_a_generator_of_its_own():
    for (module_name, name), what in PATCHED.items():
        module = importlib.import_module(module_name)
        own = GENERATORS[module_name]
        assert type(own) is random.Random and own is not random._inst, module_name
        value = getattr(module, name)
        assert value is own if name == "random" else value.__self__ is own, (module_name, name, what)
    assert len({id(g) for g in GENERATORS.values()}) == len(GENERATORS)  # one each
    before = dict(GENERATORS)
    random_isolation.isolate()  # idempotent
    assert before == GENERATORS


def module_names(library):
    """(module name, source path) of every module of an installed package."""
    spec = importlib.util.find_spec(library)
    for location in spec.submodule_search_locations:
        for path in sorted(pathlib.Path(location).rglob("*.py")):
            parts = path.relative_to(location).with_suffix("").parts
            if "tests" in parts or "test" in parts:
                continue
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            yield ".".join((library,) + parts), path


def uses_of_the_global_random(tree):
    """{name the module binds -> attributes used on it or None for a bound method}, and `import random` statements
    not at module level (a patch of the module's attribute would not reach them)."""
    names, nested = {}, []
    top_level = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "random":
                    names[alias.asname or "random"] = set()
                    if id(node) not in top_level:
                        nested.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "random":
            for alias in node.names:
                if alias.name in GLOBAL_METHODS:
                    names[alias.asname or alias.name] = None
                    if id(node) not in top_level:
                        nested.append(node.lineno)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and names.get(node.value.id) is not None:
            names[node.value.id].add(node.attr)
    return names, nested


def test_every_module_of_the_isolated_libraries_that_draws_is_patched():
    """A library update that draws from a new module, moves a draw, or uses a name a Random has not, fails here."""
    drawing, problems = set(), []
    sources = [(module_name, path, path.read_text()) for library in LIBRARIES
               for module_name, path in module_names(library)]
    # No garbage collection while parsing: an earlier test's leftover collected inside ast.parse (its finalizer's
    # ResourceWarning an error here) once made CPython 3.11.7 raise "AST constructor recursion depth mismatch".
    gc.disable()
    try:
        trees = [(module_name, ast.parse(source, str(path))) for module_name, path, source in sources]
    finally:
        gc.enable()
    for module_name, tree in trees:
        names, nested = uses_of_the_global_random(tree)
        if nested:
            problems.append(f"{module_name}: `import random` inside a function (lines {nested})")
        for name, attributes in names.items():
            if attributes is None or attributes & GLOBAL_METHODS:
                drawing.add((module_name, name))
                missing = {a for a in attributes or () if not hasattr(random.Random(), a)}
                if missing:
                    problems.append(f"{module_name} uses random.{sorted(missing)}: not on a random.Random")
    assert not problems, problems
    assert drawing == set(PATCHED), (f"drawing but not patched: {sorted(drawing - set(PATCHED))}; "
                                     f"patched but not drawing: {sorted(set(PATCHED) - drawing)}")


def states(*module_names):
    return {name: GENERATORS[name].getstate() for name in module_names}


ROOM_DRAWERS = ("aiortc.rtcrtpsender", "aiortc.codecs.vpx", "aioice.ice")


@pytest.mark.gen_test(timeout=60)
async def test_a_room_with_media_and_data_leaves_the_global_random_alone(io_loop):
    """The room server's aiortc and aioice draw (RTCP and consent jitter, the VP8 picture id), from their own."""
    server = RoomServer().listen()
    global_before, own_before = random.getstate(), states(*ROOM_DRAWERS)
    try:
        room = server.room("isolated")
        heard = []
        avatar = Avatar()
        await avatar.join(room, on_data=heard.append)
        client = SdkRoom()
        subscribed = []
        client.room.on("track_subscribed", lambda track, publication, participant: subscribed.append(track))
        await client.connect(server, "isolated", "viewer")
        await until(lambda: len(subscribed) == 2, what="the avatar's tracks")
        video = next(t for t in subscribed if t.kind == rtc.TrackKind.KIND_VIDEO)
        await asyncio.wait_for(first_video_frames(video, 3), 10)
        await client.room.local_participant.publish_data(b"hello", topic="t")
        await until(lambda: heard, what="the client's data")
        await client.room.disconnect()
    finally:
        await server.close()
    own_after = states(*ROOM_DRAWERS)
    assert [name for name in ROOM_DRAWERS if own_after[name] == own_before[name]] == []  # they did draw
    assert random.getstate() == global_before


class Commands(monitoring.CommandListener):
    def __init__(self):
        self.operation_ids = []

    def started(self, event):
        self.operation_ids.append(event.operation_id)

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


def test_monitored_mongodb_commands_leave_the_global_random_alone(mongodb_server_uri, db_name):
    """With a command listener pymongo draws an operation id per command (tests/test_lifecycle.py registers one for
    the rest of the process), from its own."""
    commands = Commands()
    client = pymongo.MongoClient(mongodb_server_uri, event_listeners=[commands])
    global_before, own_before = random.getstate(), states("pymongo.message")
    try:
        collection = client[db_name].things
        collection.insert_one({"n": 1})
        assert collection.find_one({"n": 1})["n"] == 1
        client.drop_database(db_name)
    finally:
        client.close()
    assert commands.operation_ids and all(isinstance(i, int) for i in commands.operation_ids)
    assert states("pymongo.message") != own_before
    assert random.getstate() == global_before


def test_hypothesis_generates_undisturbed_while_another_thread_sends_monitored_commands(mongodb_server_uri,
                                                                                         db_name):
    """What failed tests/test_openapi.py in full runs: the threaded sandbox's MongoDB commands drew operation ids from
    the global random while hypothesis generated in the test's thread (HypothesisDeprecationWarning, an error here).
    Without the isolation this fails so (FlakyFailure from that warning), or at least its last check."""
    commands = Commands()
    client = pymongo.MongoClient(mongodb_server_uri, event_listeners=[commands])
    stop = threading.Event()
    sent = []

    def send():
        collection = client[db_name].things
        while not stop.is_set():
            collection.find_one({"n": len(sent)})
            sent.append(1)

    thread = threading.Thread(target=send, name="monitored-mongodb", daemon=True)
    global_before = random.getstate()

    @settings(max_examples=300, derandomize=True, database=None, deadline=None)
    @given(st.dictionaries(st.text(), st.lists(st.integers() | st.text(), max_size=8), max_size=8))
    def generated(value):
        assert isinstance(value, dict)

    thread.start()
    try:
        deadline = time.monotonic() + 10
        while len(sent) < 3:
            assert time.monotonic() < deadline, "no commands from the thread"
            time.sleep(0.01)
        sent_before = len(sent)
        generated()
        sent_during = len(sent) - sent_before
    finally:
        stop.set()
        thread.join(10)
        client.drop_database(db_name)
        client.close()
    assert sent_during >= 5, f"the thread sent {sent_during} commands while hypothesis generated: too few to tell"
    assert len(commands.operation_ids) >= len(sent)  # each drew an operation id
    assert random.getstate() == global_before


def test_the_guard_fails_a_test_that_draws_and_a_draw_between_tests():
    guard = GlobalRandomGuard()
    first, second = types.SimpleNamespace(nodeid="first"), types.SimpleNamespace(nodeid="second")

    def run(hook, *args):
        steps = hook(*args)
        next(steps)  # up to the hook's yield: the fixtures' setup or teardown would run here
        return steps

    state = random.getstate()
    try:
        steps = run(guard.pytest_runtest_setup, first)
        with pytest.raises(StopIteration):
            steps.send(None)
        random.random()  # the test draws
        steps = run(guard.pytest_runtest_teardown, first, second)
        with pytest.raises(GlobalRandomDrawn, match="first changed the global random"):
            steps.send(None)
        random.random()  # something left running draws between the tests
        with pytest.raises(GlobalRandomDrawn, match="between the end of first and the start of second"):
            run(guard.pytest_runtest_setup, second)
        steps = run(guard.pytest_runtest_teardown, second, None)
        with pytest.raises(StopIteration):  # a test that draws nothing passes
            steps.send(None)
    finally:
        random.setstate(state)  # as found: the real guard checks this test too
