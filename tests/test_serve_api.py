"""The service's HTTP API on a real server (uvicorn on 127.0.0.1) with a real HTTP client,
without Ray: what clients are told before anything runs — tokens, bad jobs, full queues."""

from __future__ import annotations

import json
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from scheduler.client import Client, ServiceError
from scheduler.inbox import Cancel
from scheduler.serve.admission import Admission
from scheduler.serve.app import make_app, run_in_thread
from scheduler.serve.service import ServeOptions, Service

JOB = {"kind": "prefill", "batch": 1, "heads": 2, "kv_heads": 1, "q_len": 64, "kv_len": 64,
       "head_dim": 16, "dtype": "fp32"}


@pytest.fixture
def served(tmp_path: Path) -> Any:
    """A service's API with no run loop behind it: jobs land in its inbox."""
    service = Service(ServeOptions(tmp_path / "state", port=0), "greedy")
    service.inbox.clock = time.monotonic
    service.admission = Admission(devices=2, seconds_of=lambda job: 1.0, max_queue=3)
    ports: list[int] = []
    server = run_in_thread(make_app(service), "127.0.0.1", 0, ports.append)
    yield service, f"http://127.0.0.1:{ports[0]}"
    server.should_exit = True
    service.accepted.close()


def test_the_token_is_created_owner_only_and_every_route_needs_it(served) -> None:
    service, url = served
    mode = stat.S_IMODE((service.state / "token").stat().st_mode)
    assert mode == 0o600
    with pytest.raises(ServiceError) as e:
        Client(url, "wrong").submit(JOB)
    assert e.value.status == 401
    for path in ("/v1/status", "/v1/queue", "/v1/jobs/x"):
        request = urllib.request.Request(url + path)  # no Authorization header at all
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=10)
        assert raised.value.code == 401
    assert service.inbox.take() == []  # nothing got through
    with urllib.request.urlopen(url + "/v1/health", timeout=10) as r:  # health is open
        assert json.loads(r.read()) == {"status": "ready"}


def test_an_accepted_job_is_on_disk_and_in_the_inbox(served) -> None:
    service, url = served
    client = Client(url, service.token)
    handle = client.submit({**JOB, "id": "p1", "tenant": "alice"})
    assert handle.id == "p1" and "p1" in service.accepted
    (job,) = service.inbox.take()
    assert job.id == "p1" and job.tenant == "alice" and job.submit_time == handle.submit_time
    with pytest.raises(ServiceError) as e:  # ids are unique for the service's life
        client.submit({**JOB, "id": "p1"})
    assert e.value.status == 409
    assert (job.priority, job.deadline) == (0, None)  # the default class: batch, no target
    assert [(r["id"], r["state"]) for r in client.queue()] == [("p1", "accepted")]
    assert client.job("p1") == {"id": "p1", "state": "accepted", "attempts": None,
                                "start": None, "end": None, "device": None, "node": None,
                                "reason": None}


@pytest.mark.parametrize(("job", "field"), [
    ({**JOB, "heads": -1}, "heads"), ({**JOB, "dtype": "fp64"}, "dtype"),
    ({**JOB, "submit_time": 3}, "submit_time"), ({**JOB, "colour": 1}, "colour"),
    ({k: v for k, v in JOB.items() if k != "kind"}, "kind")])
def test_a_bad_job_is_refused_naming_its_field(served, job, field) -> None:
    service, url = served
    request = urllib.request.Request(url + "/v1/jobs", data=json.dumps(job).encode(),
                                     method="POST",
                                     headers={"Authorization": f"Bearer {service.token}"})
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=10)
    assert raised.value.code == 422
    assert json.loads(raised.value.read())["field"] == field
    assert service.inbox.take() == [] and not list(service.accepted.jobs())


def test_a_full_queue_refuses_with_429_and_retry_after(served) -> None:
    service, url = served
    client = Client(url, service.token)
    for i in range(3):
        client.submit({**JOB, "id": f"q{i}"})
    with pytest.raises(ServiceError) as e:
        client.submit({**JOB, "id": "q3"})
    assert e.value.status == 429 and e.value.retry_after is not None and e.value.retry_after > 0
    assert "q3" not in service.accepted  # refused at once, never accepted then dropped
    assert "queue is full" in e.value.detail
    service.admission.release("q0")  # one ended: room for one more
    client.submit({**JOB, "id": "q3"})
    with pytest.raises(ServiceError):
        client.submit({**JOB, "id": "q4"})


def test_cancel_answers_what_the_run_loop_found(served) -> None:
    """A running job is cancelled when its batch stops; the request is on disk before the
    run loop takes it, so a restart still honours it."""
    service, url = served
    client = Client(url, service.token)
    client.submit({**JOB, "id": "c1"})
    import threading

    def loop() -> None:  # stands in for the run loop: the job is running
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for item in service.inbox.take():
                if isinstance(item, Cancel):
                    item.outcome.set_result("running")
                    return
            time.sleep(0.01)

    threading.Thread(target=loop, daemon=True).start()
    assert client.cancel("c1") == {"id": "c1", "state": "cancelling"}  # ends with its batch
    assert service.accepted.cancels() == {"c1": "cancelled by the client"}  # durable first
    with pytest.raises(ServiceError) as e:
        client.cancel("nope")
    assert e.value.status == 404


def test_the_openapi_schema_lists_the_routes(served) -> None:
    _, url = served
    with urllib.request.urlopen(url + "/openapi.json", timeout=10) as r:
        schema = json.loads(r.read())
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/status", "/v1/queue"} <= set(schema["paths"])


def test_the_submit_command_names_the_file_line_and_field(served, cli, tmp_path) -> None:
    service, url = served
    (service.state / "endpoint.json").write_text(json.dumps({"url": url}))
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({**JOB, "id": "ok1"}) + "\n" + json.dumps({**JOB, "heads": "two"})
                    + "\n")
    code, out, err = cli("submit", jobs, "--state", service.state)
    assert code == 2 and "accepted" not in out  # every row is checked before any is sent
    assert "jobs.jsonl:2" in err and "heads" in err and "Traceback" not in err
    assert service.inbox.take() == []
    code, _, err = cli("submit", tmp_path / "none.jsonl", "--state", service.state)
    assert code == 2 and "cannot read the jobs" in err and "internal error" not in err
    assert "token" not in repr(Client(url, service.token))
    assert service.token not in repr(Client(url, service.token))


def test_a_state_folder_is_served_only_with_the_options_it_was_served_with(cli, tmp_path
                                                                           ) -> None:
    """The journal resumes only the same run: a restart with another policy is refused with
    one line naming the difference, before Ray starts (nothing is listening after)."""
    from scheduler.journal import Journal
    from workers.executor import LiveConfig, run_identity

    state = tmp_path / "state"
    state.mkdir()
    Journal(state / "journal.sqlite", run_identity(None, LiveConfig(emulate_gpus=2),
                                                   "greedy")).close()
    code, _, err = cli("serve", "--policy", "adaptive", "--emulate-gpus", "2", "--state", state,
                       "--port", "0")
    assert code == 2 and "--policy" in err and "greedy" in err and "new --state" in err
    assert not (state / "endpoint.json").exists()


def _qkv(dtype: Any = None, q_heads: int = 4) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(1)
    shape_q, shape_kv = (2, q_heads, 32, 16), (2, 2, 48, 16)
    return {n: torch.randn(s, generator=g).to(dtype or torch.float32)
            for n, s in (("q", shape_q), ("k", shape_kv), ("v", shape_kv))}


def _post(url: str, token: str, fields: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    from urllib3 import encode_multipart_formdata

    body, content_type = encode_multipart_formdata(fields)
    request = urllib.request.Request(url + "/v1/jobs", data=body, method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_job_with_tensors_is_shaped_by_them_and_kept_on_disk(served) -> None:
    import torch
    from safetensors.torch import load

    service, url = served
    client = Client(url, service.token)
    qkv = _qkv(torch.bfloat16)
    handle = client.submit({"id": "t1", "causal": False}, tensors=qkv)
    (job,) = service.inbox.take()
    assert (job.kind.value, job.batch, job.heads, job.kv_heads, job.q_len, job.kv_len,
            job.head_dim, job.dtype.value, job.causal) == (
        "prefill", 2, 4, 2, 32, 48, 16, "bf16", False)
    stored = load(service.payloads.inputs(["t1"])["t1"])  # on disk before the 202
    assert all(torch.equal(stored[n], qkv[n]) for n in "qkv")
    with pytest.raises(ServiceError) as e:  # no output before the job ends
        client.output(handle.id)
    assert e.value.status == 409
    from scheduler.serve.tensors import encode

    service.payloads.save_outputs({"t1": encode({"o": qkv["q"]})})
    assert not service.payloads.inputs(["t1"])  # an ended job's inputs go
    assert torch.equal(load(client.output("t1"))["o"], qkv["q"])
    with pytest.raises(ServiceError) as e:  # .npy has no bf16
        client.output("t1", "npy")
    assert e.value.status == 422 and e.value.field == "format"


def test_npy_parts_are_read_without_pickles(served) -> None:
    import io

    import numpy as np

    service, url = served
    parts = {}
    for name, t in _qkv().items():
        buffer = io.BytesIO()
        np.save(buffer, t.numpy())
        parts[name] = (f"{name}.npy", buffer.getvalue())
    status, answer = _post(url, service.token, {"job": json.dumps({"id": "n1"}), **parts})
    assert status == 202, answer
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    status, answer = _post(url, service.token, {**parts, "q": ("q.npy", buffer.getvalue())})
    assert status == 422 and answer["field"] == "tensors.q"  # a pickle is never loaded


@pytest.mark.parametrize(("change", "field"), [
    (lambda t: {**t, "q": t["q"][0]}, "tensors.q"),  # three dimensions
    (lambda t: {**t, "v": t["v"][:, :1]}, "tensors.v"),  # v's shape is not k's
    (lambda t: {**t, "k": t["k"].double()}, "tensors.k"),  # fp64
    (lambda t: {"q": t["q"], "k": t["k"]}, "tensors.v"),  # v missing
])
def test_bad_tensors_are_refused_naming_the_tensor(served, change, field) -> None:
    from scheduler.serve.tensors import encode

    service, url = served
    tensors = change(_qkv())
    status, answer = _post(url, service.token, {
        "job": "{}", "tensors": ("t.safetensors", encode(tensors))})
    assert status == 422 and answer["field"] == field, answer
    assert service.inbox.take() == [] and not list(service.accepted.jobs())
    assert not list((service.state / "inputs").glob("*"))  # nothing staged stays behind


def test_a_job_field_must_agree_with_its_tensors_and_size_is_bounded(served) -> None:
    service, url = served
    client = Client(url, service.token)
    with pytest.raises(ServiceError) as e:
        client.submit({"heads": 8}, tensors=_qkv())
    assert e.value.status == 422 and e.value.field == "heads"
    with pytest.raises(ServiceError) as e:
        client.submit({"kind": "decode"}, tensors=_qkv())
    assert e.value.status == 422 and e.value.field == "kind"
    service.options.max_tensor_bytes = 1024
    with pytest.raises(ServiceError) as e:
        client.submit({}, tensors=_qkv())
    assert e.value.status == 413 and "at most" in e.value.detail
    assert service.inbox.take() == []


def test_quotas_are_respected_and_borrowing_is_shown(served) -> None:
    """Over HTTP: a tenant past its own quota borrows idle quota (counted in the status),
    then is refused with 429 naming the quota, while another tenant's own quota holds."""
    from scheduler.serve.admission import Quota

    service, url = served
    gib = 1 << 30
    service.admission = Admission(devices=1, seconds_of=lambda job: 1.0,
                                  memory_of=lambda job: gib,
                                  quotas={"alice": Quota(None, 2 * gib), "bob": Quota(None, gib)})
    client = Client(url, service.token)
    for i in range(3):  # 2 GiB its own, the third borrowed from bob
        client.submit({**JOB, "id": f"a{i}", "tenant": "alice"})
    with pytest.raises(ServiceError) as e:
        client.submit({**JOB, "id": "a3", "tenant": "alice"})
    assert e.value.status == 429 and "device memory" in e.value.detail and e.value.retry_after
    client.submit({**JOB, "id": "b0", "tenant": "bob"})
    service.admission.memory_of = lambda job: 4 * gib  # more than alice and bob have
    with pytest.raises(ServiceError) as e:
        client.submit({**JOB, "id": "a4", "tenant": "alice"})
    assert (e.value.status, e.value.field, e.value.retry_after) == (422, "tenant", None)
    counts = {(a["verdict"], a["tenant"]): a["jobs"] for a in client.status()["admissions"]}
    assert counts == {("accepted", "alice"): 2, ("borrowed", "alice"): 1,
                      ("quota", "alice"): 2, ("accepted", "bob"): 1}


def test_the_shell_path_for_tensors_checks_first_and_writes_o_where_asked(
        served, cli, tmp_path) -> None:
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from scheduler.serve.tensors import encode

    service, url = served
    (service.state / "endpoint.json").write_text(json.dumps({"url": url}))
    qkv = _qkv()
    save_file(qkv, tmp_path / "qkv.safetensors")
    save_file({"q": qkv["q"], "k": qkv["k"]}, tmp_path / "no-v.safetensors")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "t1", "tensors": "qkv.safetensors"}) + "\n"
                    + json.dumps({"id": "t2", "tensors": "no-v.safetensors"}) + "\n")
    code, out, err = cli("submit", jobs, "--state", service.state)
    assert code == 2 and "jobs.jsonl:2" in err and "tensors.v" in err and not out
    code, _, err = cli("submit", jobs, "--state", service.state, "--outputs", tmp_path / "o")
    assert code == 2 and "--wait" in err
    jobs.write_text(json.dumps({"id": "t1", "tensors": "qkv.safetensors"}) + "\n")
    code, out, err = cli("submit", jobs, "--state", service.state)
    assert code == 0 and "accepted t1" in out, err
    client = Client(url, service.token)
    client.submit({"id": "t2"}, tensors=str(tmp_path / "qkv.safetensors"))  # a path as text
    client.submit({"id": "t3"}, tensors={**qkv, "v": qkv["k"]})  # k and v one tensor
    assert [j.id for j in service.inbox.take()] == ["t1", "t2", "t3"]
    service.payloads.save_outputs({"t1": encode({"o": qkv["q"]})})
    code, out, err = cli("output", "t1", "-o", tmp_path / "o.npy", "--state", service.state)
    assert code == 0, err  # the format follows the file's suffix
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "o.npy")), qkv["q"])
    code, _, err = cli("output", "t1", "-o", tmp_path / "no" / "o.npy", "--state",
                       service.state)
    assert code == 2 and "no such folder" in err and "internal error" not in err


def test_a_restart_finds_accepted_tensors_and_cancellations(served) -> None:
    """What a killed service had acknowledged is on disk: a restarted one hands the loop
    each open job again (its tensors with it) and the cancellations it had not taken."""
    service, url = served
    client = Client(url, service.token)
    client.submit({"id": "keep"}, tensors=_qkv())
    client.submit({**JOB, "id": "drop"})
    service.accepted.cancel("drop", "cancelled by the client")  # asked, then killed
    again = Service(ServeOptions(service.state, port=0), "greedy")
    try:
        assert again.restore(Admission(devices=2, seconds_of=lambda job: 1.0)) == 2
        items = again.inbox.take()
        assert [getattr(i, "id", None) or i.job for i in items] == ["keep", "drop", "drop"]
        assert isinstance(items[-1], Cancel)
        assert set(again.payloads.inputs(["keep", "drop"])) == {"keep"}
    finally:
        again.accepted.close()
