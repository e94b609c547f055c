"""Tasks end to end on the real engine: outcomes, service upkeep, restarts of agent and scheduler."""

from __future__ import annotations

import signal

import pytest
import requests

from tests.harness import IMAGE, Platform, wait_for
from tests.integration.conftest import SocketProxy

pytestmark = pytest.mark.integration


def only_task(p: Platform, job_id: str) -> dict[str, object]:
    (task,) = p.tasks(job_id)
    return task


def test_batch_outcomes_normal_failed_oom_killed(platform: Platform) -> None:
    p = platform
    ok = p.submit("exit 0")
    fails = p.submit("exit 3")
    oom = p.submit("dd if=/dev/zero of=/dev/null bs=200M count=1", resources={"cpu": 0.1, "memoryMiB": 32})
    sleeper = p.submit("sleep 600", killGraceSeconds=1)
    wait_for(lambda: p.started(sleeper), 30, "sleeper Started")
    p.api("POST", f"/v1/jobs/{sleeper}/kill", expect=202)
    for job_id, reason, words in (
        (ok, "normal", "exited with code 0"),
        (fails, "failed", "exited with code 3"),
        (oom, "failed", "OOM-killed"),
        (sleeper, "killed", "killed on request"),
    ):
        p.wait_job_finished(job_id)
        task = only_task(p, job_id)
        assert task["reason"] == reason, task
        assert words in str(task["message"])
        assert set(task["timestamps"]) >= {"Accepted", "Launched", "Started", "Finished"}  # type: ignore[arg-type]
    assert only_task(p, fails)["exitCode"] == 3
    # Finished containers are removed; the agent forgets reported tasks.
    wait_for(lambda: not p.containers(all=True), 10, "containers removed")
    metrics = p.agent_metrics()
    assert 'titus_agent_tasks_finished_total{reason="failed"} 2.0' in metrics
    assert 'titus_agent_tasks_finished_total{reason="killed"} 1.0' in metrics


def test_last_output_reaches_the_scheduler_before_the_container_goes(platform: Platform) -> None:
    """agent/logtail.py: the container stays until the terminal update carrying its last output is
    accepted; then the task shows `logTail` and the container is removed."""
    p = platform
    # The task ends only when told, so the scheduler is stopped before it can (a fixed sleep raced a
    # slow Started report on a loaded machine).
    # One stream (stderr) for all of it: the engine copies stdout and stderr concurrently, so their
    # relative order in its log is not the program's (a loaded run put the stderr line before 151).
    job = p.submit("while [ ! -e /tmp/go ]; do sleep 0.1; done; seq 1 200 >&2; echo 'fatal: out of widgets' >&2; exit 3")
    wait_for(lambda: p.started(job), 30, "Started")
    p.scheduler.p.send_signal(signal.SIGSTOP)  # the report cannot be accepted meanwhile
    try:
        assert p.containers()[0].exec_run(["touch", "/tmp/go"]).exit_code == 0
        def finished_on_agent() -> list[dict[str, object]]:
            doc = p.http.get(f"http://127.0.0.1:{p.agent_port}/v1/tasks", timeout=5).json()
            return [t for t in doc["tasks"] if t["state"] == "Finished" and t.get("log_tail")]

        wait_for(finished_on_agent, 30, "the task Finished on the agent, its tail kept")
        # Torn down, but nothing has accepted its last output yet: the container stays.
        assert [c.status for c in p.containers(all=True)] == ["exited"]
        assert str(finished_on_agent()[0]["log_tail"]).endswith("fatal: out of widgets\n")
    finally:
        p.scheduler.p.send_signal(signal.SIGCONT)
    p.wait_job_finished(job)
    tail = str(only_task(p, job)["logTail"])
    assert tail.endswith("fatal: out of widgets\n") and "200\n" in tail and "\n100\n" not in tail  # the last 50 lines
    wait_for(lambda: not p.containers(all=True), 10, "container removed once the report was accepted")


def test_runtime_limit_and_retries(platform: Platform) -> None:
    p = platform
    spec = {
        "appName": "limit",
        "owner": "tests",
        "container": {"image": IMAGE, "command": ["sleep", "600"], "killGraceSeconds": 1},
        "batch": {"size": 1, "runtimeLimitSeconds": 5, "retryPolicy": {"retries": 1}},
    }
    job_id = p.api("POST", "/v1/jobs", spec, expect=201)["id"]
    p.wait_job_finished(job_id, timeout=60)
    tasks = p.tasks(job_id)
    assert len(tasks) == 2  # the first attempt and its one retry
    assert all(t["reason"] == "failed" and "runtime limit of 5s" in t["message"] for t in tasks)
    assert tasks[-1]["retriesUsed"] == 1


def test_service_keeps_desired_count_after_outside_kill(platform: Platform) -> None:
    p = platform
    job_id = p.submit("sleep 600", count=2, service=True, killGraceSeconds=1)
    wait_for(lambda: len(p.started(job_id)) == 2, 30, "2 Started")
    victim = p.containers()[0]
    victim.kill()  # from outside the platform
    wait_for(lambda: any(t["state"] == "Finished" for t in p.tasks(job_id)), 20, "victim Finished")
    dead = next(t for t in p.tasks(job_id) if t["state"] == "Finished")
    assert dead["reason"] == "failed" and "not by titus" in dead["message"]
    wait_for(lambda: len(p.started(job_id)) == 2, 30, "back to 2 Started")
    assert len(p.containers()) == 2
    p.api("POST", f"/v1/jobs/{job_id}/kill", expect=202)
    p.wait_job_finished(job_id, timeout=30)


def test_agent_kill9_restart_readopts_running_containers(platform: Platform) -> None:
    p = platform
    job_id = p.submit("sleep 600", count=5, service=True, killGraceSeconds=1)
    wait_for(lambda: len(p.started(job_id)) == 5, 60, "5 Started")
    before = {c.id: c.attrs["State"]["StartedAt"] for c in p.containers()}
    tasks_before = {t["id"] for t in p.started(job_id)}
    assert p.agent is not None
    p.agent.stop(signal.SIGKILL)
    p.start_agent()
    wait_for(lambda: "titus_agent_adopted_total 5.0" in p.agent_metrics(), 20, "5 adopted")
    after = {c.id: c.attrs["State"]["StartedAt"] for c in p.containers()}
    assert after == before  # the same containers, never restarted
    assert {t["id"] for t in p.started(job_id)} == tasks_before
    assert p.node()["missingTasks"] == []  # type: ignore[index]
    # Re-adopted tasks are still under control: a kill reaches them.
    p.api("POST", f"/v1/jobs/{job_id}/kill", expect=202)
    p.wait_job_finished(job_id, timeout=30)
    assert all(t["reason"] == "killed" for t in p.tasks(job_id))
    wait_for(lambda: not p.containers(all=True), 10, "containers removed")


def test_adopted_task_that_exited_while_agent_was_down(platform: Platform) -> None:
    p = platform
    job_id = p.submit("sleep 3; exit 7")
    wait_for(lambda: p.started(job_id), 30, "Started")
    assert p.agent is not None
    p.agent.stop(signal.SIGKILL)
    wait_for(lambda: all(c.status == "exited" for c in p.containers(all=True)), 20, "container exited")
    p.start_agent()
    p.wait_job_finished(job_id)
    task = only_task(p, job_id)
    assert (task["reason"], task["exitCode"]) == ("failed", 7)


def test_unknown_labelled_container_is_reported_not_killed(platform: Platform) -> None:
    p = platform
    stranger = p.engine.containers.run(
        IMAGE, ["sleep", "600"], detach=True, network_mode="none",
        labels={"titus.agent": p.node_id, "titus.task_id": "not-a-task"},
    )
    try:
        assert p.agent is not None
        p.agent.stop()
        p.start_agent()
        wait_for(lambda: p.node()["unknownContainers"] == [stranger.id[:12]], 20, "reported")  # type: ignore[index]
        stranger.reload()
        assert stranger.status == "running"
        assert "titus_agent_unknown_containers 1.0" in p.agent_metrics()
    finally:
        stranger.remove(force=True)


def test_scheduler_restart_keeps_jobs_and_tasks(platform: Platform) -> None:
    p = platform
    done = p.submit("exit 0", count=2)
    p.wait_job_finished(done)
    running = p.submit("sleep 600", count=2, service=True, killGraceSeconds=1)
    wait_for(lambda: len(p.started(running)) == 2, 30, "2 Started")
    before = {j: p.tasks(j) for j in (done, running)}
    jobs_before = p.api("GET", "/v1/jobs")["jobs"]
    assert p.scheduler is not None
    p.scheduler.stop(signal.SIGKILL)
    p.start_scheduler()
    assert p.api("GET", "/v1/jobs")["jobs"] == jobs_before
    assert {j: p.tasks(j) for j in (done, running)} == before
    # The agent reconnects by itself and the running tasks are still controllable.
    wait_for(lambda: (n := p.node()) is not None and n["status"] == "Ready", 20, "agent back")
    p.api("POST", f"/v1/jobs/{running}/kill", expect=202)
    p.wait_job_finished(running, timeout=30)


def test_pull_from_registry(platform: Platform) -> None:
    """A reference the host has never seen is pulled from the registry at launch — by the digest the
    job was pinned to at submit (docs/provenance.md), so the host then holds name@digest."""
    p = platform
    fresh = f"127.0.0.1:5000/titus/pulltest-{p.node_id}:1"
    p.engine.images.get(IMAGE).tag(fresh)
    p.engine.images.push(fresh)
    p.engine.images.remove(fresh)  # only the tag goes; the shared test image stays
    pinned = fresh
    try:
        job_id = p.submit("exit 0", image=fresh)
        p.wait_job_finished(job_id)
        assert only_task(p, job_id)["reason"] == "normal"
        pinned = fresh.rsplit(":", 1)[0] + "@" + p.job(job_id)["provenance"]["imageDigest"]
        assert p.engine.images.get(pinned) is not None
    finally:
        wait_for(lambda: not p.containers(all=True), 10, "containers removed")
        p.engine.images.remove(pinned)


def test_image_missing_from_registry_fails_without_looping(platform: Platform) -> None:
    p = platform
    job_id = p.submit("exit 0", image="127.0.0.1:5000/titus/does-not-exist:1")
    p.wait_job_finished(job_id)
    task = only_task(p, job_id)
    assert task["reason"] == "failed" and "not found" in task["message"]


def test_docker_down_at_launch_crashes_task_agent_stays_up(platform: Platform, docker_proxy: SocketProxy) -> None:
    p = platform
    assert p.agent is not None
    p.agent.stop()
    p.start_agent("--docker-url", f"unix://{docker_proxy.path}")
    docker_proxy.down()
    job_id = p.submit("exit 0")
    crashed = wait_for(
        lambda: [t for t in p.tasks(job_id) if t["reason"] == "crashed"], 30, "a crashed attempt"
    )
    assert "Docker engine unreachable" in crashed[0]["message"]
    assert crashed[0]["retriesUsed"] == 0
    health = requests.get(f"http://127.0.0.1:{p.agent_port}/healthz", timeout=5)
    assert health.status_code == 503 and health.json()["docker"] is False
    assert p.agent.alive()
    # The engine comes back: the platform retries (costing no user retry) and the job completes.
    docker_proxy.up()
    p.wait_job_finished(job_id, timeout=60)
    final = [t for t in p.tasks(job_id) if not t["replacedBy"]]
    assert [t["reason"] for t in final] == ["normal"]
