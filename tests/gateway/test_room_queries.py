"""Every query the room agents' storage sends (models/sessions.py, the room holder's part) is planned on an index by
the MongoDB-compatible server the tests and the sandbox run on: the commands are captured as pymongo sends them, then
explained."""
import pymongo
import pytest
from pymongo import monitoring

from models.sessions import SessionRepository
from models.store import Store

EXPLAINABLE = ("find", "findAndModify", "update")
NOT_SENT = ("lsid", "$db", "$clusterTime", "txnNumber", "$readPreference", "writeConcern")


class Commands(monitoring.CommandListener):
    def __init__(self):
        self.sent = []

    def started(self, event):
        if event.command_name in EXPLAINABLE:
            self.sent.append({k: v for k, v in event.command.items() if k not in NOT_SENT})

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


def stages(plan):
    """Every stage name in a plan tree."""
    out = [plan.get("stage")]
    for key in ("inputStage", "outerStage", "innerStage"):
        if isinstance(plan.get(key), dict):
            out += stages(plan[key])
    for child in plan.get("inputStages", []):
        out += stages(child)
    return out


@pytest.mark.gen_test(timeout=30)
async def test_room_holder_queries_use_an_index(sandbox):
    commands = Commands()
    client = pymongo.MongoClient(sandbox.settings.mongodb_uri, event_listeners=[commands])
    try:
        db = client.get_default_database()
        store = Store(sandbox.settings.mongodb_uri, 2)
        store.db = db  # the gateway's collections and indexes, through a client that records what it sends
        sessions = SessionRepository(store)
        for i in range(50):
            await sessions.create(f"q-{i}", "liveavatar", "heygen", None, "customer", "t", 1.0,
                                  room_url="ws://room", agent_token="a")
        commands.sent.clear()
        await sessions.hold_room("q-1", "p1", ("dead",))
        await sessions.rooms_held_by("p1")
        await sessions.rooms_held_by("")
        await sessions.ended_among(["q-1", "q-2"])
        await sessions.rooms_moved(["q-1"], "p1", "p2")
        await sessions.note_room("q-1", "a note")
        await sessions.release_room("q-1", "p2")
        await sessions.give_up_room("q-2", "", "a note")
        await sessions.get("q-1")
        assert len(commands.sent) == 9
        for command in commands.sent:
            explained = db.command("explain", command)
            plan = stages(explained["queryPlanner"]["winningPlan"])
            assert "IXSCAN" in plan and "COLLSCAN" not in plan, (command, plan)
        store.executor.shutdown()
    finally:
        client.close()
