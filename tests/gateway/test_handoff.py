"""The hand-off's promises that need no killed process: a report racing the stop, tokens bound to their provider
and session, the turn queue's bound, the idempotency key Petya gets, and a conversation over several sessions."""
import asyncio
import random

import pytest
from tornado.httpclient import HTTPClientError
from tornado.websocket import websocket_connect

from handlers.app import Gateway
from tests.helpers.client import GatewayClient, eventually
from tests.helpers.flows import bearer, minted, open_session, ws_url
from tests.helpers.store import HeldWorkers


@pytest.mark.gen_test(timeout=120)
async def test_a_report_racing_the_stop_is_in_the_hand_off_whenever_it_was_recorded(make_sandbox):
    sandbox = await make_sandbox()
    other = await Gateway.build(sandbox.settings).start()  # reports reach another process than the stop
    try:
        client = GatewayClient(sandbox.gateway_url)
        other_client = GatewayClient(f"http://127.0.0.1:{other.port}")
        rng = random.Random(7)
        recorded, refused = 0, 0
        for round_ in range(40):
            conversation = f"race-{round_}"
            session_id, token = await minted(client, conversation)
            assert (await client.call("/v1/sessions/start", api_key=None, headers=bearer(token))).status == 201

            async def report(n):
                await asyncio.sleep(rng.uniform(0, 0.012))
                text = f"Report {n} of round {round_}."
                reply = await rng.choice([client, other_client]).call(
                    "/v1/streaming.user_message", {"session_id": session_id, "text": text})
                return text, reply

            async def stop():
                await asyncio.sleep(rng.uniform(0, 0.008))
                return await client.call("/v1/sessions/stop", api_key=None, headers=bearer(token))

            *reports, stopped = await asyncio.gather(*[report(n) for n in range(6)], stop())
            assert stopped.status == 200
            await eventually(lambda: sandbox.petya.deliveries(conversation))
            delivered = [t["transcript"] for t in sandbox.petya.deliveries(conversation)[0]["transcript"]]
            for text, reply in reports:
                assert reply.status in (200, 409), reply.json
                if reply.status == 200:
                    assert reply.data["recorded"] is True
                    assert text in delivered, (text, delivered)
                    recorded += 1
                else:
                    assert text not in delivered
                    refused += 1
        await asyncio.sleep(0.3)
        for round_ in range(40):
            assert len(sandbox.petya.deliveries(f"race-{round_}")) == 1
        print(f"\nreport/stop race: {recorded} recorded (all in the hand-off), {refused} refused with 409")
        assert recorded and refused  # both sides of the race were exercised
    finally:
        await other.stop()


@pytest.mark.gen_test(timeout=30)
async def test_tokens_are_bound_to_their_provider_and_a_liveavatar_token_to_its_session(sandbox, client):
    heygen_token, heygen_session = await open_session(client)
    la_session, la_token = await minted(client, "bound-1")
    other_la_session, _ = await minted(client, "bound-2")

    # A LiveAvatar token does not open the same customer's HeyGen socket, nor make HeyGen calls.
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(ws_url(sandbox, heygen_session["session_id"], la_token))
    assert refused.value.code == 401
    keep = await client.call("/v1/streaming.keep_alive", {"session_id": heygen_session["session_id"]},
                             api_key=None, headers=bearer(la_token))
    assert keep.status == 401
    # It reaches its own session only.
    other = await client.call("/v1/streaming.user_message", {"session_id": other_la_session, "text": "Hi"},
                              api_key=None, headers=bearer(la_token))
    assert other.status == 404
    own = await client.call("/v1/streaming.user_message", {"session_id": la_session, "text": "Hi"},
                            api_key=None, headers=bearer(la_token))
    assert own.status == 200
    stop_other = await client.call("/v1/sessions/stop", {"session_id": other_la_session}, api_key=None,
                                   headers=bearer(la_token))
    assert stop_other.status == 404 and sandbox.liveavatar.sessions[other_la_session].status != "stopped"
    # A HeyGen token makes no LiveAvatar calls.
    assert (await client.call("/v1/sessions/keep-alive", {"session_id": la_session}, api_key=None,
                              headers=bearer(heygen_token))).status == 401
    assert (await client.call("/v1/streaming.transcript?session_id=" + la_session, method="GET", api_key=None,
                              headers=bearer(heygen_token))).status == 404


@pytest.mark.gen_test(timeout=30)
async def test_full_turn_queue_refuses_tasks_before_heygen_is_called(make_sandbox):
    sandbox = await make_sandbox(TURN_QUEUE_MAX="1")
    client = GatewayClient(sandbox.gateway_url)
    _, session = await open_session(client)
    session_id = session["session_id"]
    await client.call("/v1/streaming.start", {"session_id": session_id})
    with sandbox.gateway.turns.take_slot():  # the one slot is taken, as by a turn MongoDB has not taken yet
        calls = len(sandbox.heygen.recorder.calls("/v1/streaming.task"))
        reply = await client.call("/v1/streaming.task", {"session_id": session_id, "text": "Hello"})
        assert reply.status == 503 and reply.headers["Retry-After"]
        assert len(sandbox.heygen.recorder.calls("/v1/streaming.task")) == calls
        report = await client.call("/v1/streaming.avatar_message", {"session_id": session_id, "text": "Hello"})
        assert report.status == 503
    assert (await client.call("/v1/streaming.task", {"session_id": session_id, "text": "Hello"})).status == 200


@pytest.mark.gen_test(timeout=30)
async def test_every_hand_off_attempt_carries_one_idempotency_key_and_petya_applies_it_once(sandbox, client):
    session_id, token = await minted(client, "idem")
    await client.call("/v1/streaming.user_message", {"session_id": session_id, "text": "Once."})
    sandbox.petya.fail_status = 503
    await client.call("/v1/sessions/stop", api_key=None, headers=bearer(token))
    await eventually(lambda: len(sandbox.petya.recorder.calls("/conversations/idem/status")) >= 2)
    sandbox.petya.fail_status = None
    await eventually(lambda: sandbox.petya.deliveries("idem"))
    posts = sandbox.petya.recorder.calls("/conversations/idem/status")
    keys = {post.headers["idempotency-key"] for post in posts}
    assert len(keys) == 1 and {post.json()["deliveryId"] for post in posts} == keys
    # The same delivery again (as after a lost acknowledgement): 200, nothing changes.
    again = await GatewayClient(sandbox.served["petya"].url).call(
        "/api/v1/avatar/conversations/idem/status", {**posts[-1].json(), "transcript": []}, api_key=None,
        headers={"Authorization": f"Bearer {sandbox.petya.service_token}", "Idempotency-Key": keys.pop()})
    assert again.status == 200 and again.json["repeat"] is True
    deliveries = sandbox.petya.deliveries("idem")
    assert len(deliveries) == 1 and [t["transcript"] for t in deliveries[0]["transcript"]] == ["Once."]


@pytest.mark.gen_test(timeout=30)
async def test_a_conversation_over_two_sessions_holds_both_when_the_first_hand_off_lands_last(sandbox, client):
    """The plugin keeps its conversation id across a page reload: the second session's hand-off reaches Petya before
    the first one's (Petya failed for it, then recovered), and the conversation still holds both, in spoken order."""
    conversation = "reloaded"

    def attempts(session_id):
        return [post for post in sandbox.petya.recorder.calls(f"/conversations/{conversation}/status")
                if post.json()["sessionId"] == session_id]

    first, first_token = await minted(client, conversation)
    said = await client.call("/v1/streaming.user_message", {"session_id": first, "text": "Before the reload."})
    assert said.status == 200
    sandbox.petya.fail_sessions[first] = 503
    assert (await client.call("/v1/sessions/stop", api_key=None, headers=bearer(first_token))).status == 200
    await eventually(lambda: len(attempts(first)) >= 2)

    second, second_token = await minted(client, conversation)  # the page reloaded: same conversation, new session
    said = await client.call("/v1/streaming.user_message", {"session_id": second, "text": "After the reload."})
    assert said.status == 200
    assert (await client.call("/v1/sessions/stop", api_key=None, headers=bearer(second_token))).status == 200
    await eventually(lambda: sandbox.petya.deliveries(conversation))
    assert [t["transcript"] for t in sandbox.petya.get_conversation(conversation)["transcript"]] == [
        "After the reload."]

    del sandbox.petya.fail_sessions[first]  # Petya recovers; the gateway's retry of the first hand-off lands
    await eventually(lambda: len(sandbox.petya.deliveries(conversation)) == 2)
    await asyncio.sleep(0.3)
    assert [d["sessionId"] for d in sandbox.petya.deliveries(conversation)] == [second, first]
    stored = sandbox.petya.get_conversation(conversation)
    assert [(t["role"], t["transcript"]) for t in stored["transcript"]] == [
        ("user", "Before the reload."), ("user", "After the reload.")]
    assert [(s["sessionId"], [t["transcript"] for t in s["transcript"]]) for s in stored["sessions"]] == [
        (first, ["Before the reload."]), (second, ["After the reload."])]
    assert (stored["sessionId"], stored["status"]) == (second, "completed")


@pytest.mark.gen_test(timeout=30)
async def test_a_full_database_queue_refuses_calls_but_never_the_lease_heartbeat(sandbox, client):
    """Every worker held and the queue at its count bound (models/store.py Store.run): a browser's call is refused at
    once, an essential call (the lease heartbeat's write) waits and gets the first free worker, ahead of the calls
    that waited before it."""
    store, leases = sandbox.gateway.store, sandbox.gateway.leases
    held = HeldWorkers(store)
    try:
        await held.hold(store.workers + store.max_queued)  # as if a burst of socket closes had filled the queue
        assert store.running == store.workers and store.waiting == store.max_queued and store.busy
        reply = await client.call("/v1/streaming.create_token")
        assert reply.status == 503 and reply.headers["Retry-After"]  # the database's bound holds for calls
        assert "busy" in reply.json["message"]
        now = leases.clock()
        renewed = asyncio.ensure_future(leases.repository.renew(leases.process_id, now, leases.ttl, None))
        await asyncio.sleep(0.1)
        assert not renewed.done()  # waiting for a worker, not refused
        held.released.set()  # the held calls end: the first free worker goes to the heartbeat's write
        await renewed  # not refused (that would raise); False only when the process's own heartbeat wrote after it
        assert sum(not call.done() for call in held.calls) > store.max_queued // 2  # it did not wait its turn
        lease = await store.run(leases.repository.collection.find_one, {"process_id": leases.process_id})
        assert lease["heartbeat_at"] >= now
    finally:
        await held.release()
