import pytest

from agent.exits import ExitFacts, classify
from titus_common.states import FinishReason as R


@pytest.mark.parametrize(
    "facts,reason,message_part",
    [
        (ExitFacts(exit_code=0), R.NORMAL, "code 0"),
        (ExitFacts(exit_code=3), R.FAILED, "code 3"),
        (ExitFacts(exit_code=127), R.FAILED, "command not found"),
        (ExitFacts(exit_code=137, oom_killed=True, memory_mib=64), R.FAILED, "OOM-killed: out of memory (limit 64"),
        (ExitFacts(exit_code=137), R.FAILED, "SIGKILL (exit code 137), not by titus"),
        (ExitFacts(exit_code=143), R.FAILED, "SIGTERM (exit code 143), not by titus"),
        (ExitFacts(exit_code=137, kill_requested=True), R.KILLED, "killed on request"),
        (ExitFacts(exit_code=143, kill_requested=True), R.KILLED, "killed on request"),
        (ExitFacts(exit_code=0, kill_requested=True), R.KILLED, "killed on request"),
        (ExitFacts(exit_code=143, runtime_limit_seconds=5), R.FAILED, "runtime limit of 5s exceeded"),
        (ExitFacts(exit_code=137, oom_killed=True, kill_requested=True), R.KILLED, "on request"),
        (ExitFacts(container_missing=True), R.CRASHED, "disappeared"),
        (ExitFacts(exit_code=128, runtime_error="failed to mount"), R.CRASHED, "failed to mount"),
        (ExitFacts(exit_code=None), R.CRASHED, "no exit status"),
        (ExitFacts(exit_code=255), R.FAILED, "code 255"),
    ],
)
def test_classify(facts: ExitFacts, reason: R, message_part: str) -> None:
    got_reason, message = classify(facts)
    assert got_reason is reason
    assert message_part in message


def test_from_inspect_reads_engine_state() -> None:
    facts = ExitFacts.from_inspect({"State": {"ExitCode": 137, "OOMKilled": True, "Error": ""}}, memory_mib=64)
    assert facts == ExitFacts(exit_code=137, oom_killed=True, memory_mib=64)
    assert ExitFacts.from_inspect(None).container_missing
