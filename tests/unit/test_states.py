import pytest

from titus_common.states import FinishReason, TaskState, TransitionError, can_transition, check_transition

S = TaskState


@pytest.mark.parametrize(
    "current,new,allowed",
    [
        (S.ACCEPTED, S.LAUNCHED, True),
        (S.LAUNCHED, S.START_INITIATED, True),
        (S.START_INITIATED, S.STARTED, True),
        (S.STARTED, S.KILL_INITIATED, True),
        (S.KILL_INITIATED, S.FINISHED, True),
        (S.LAUNCHED, S.STARTED, True),  # a fast container may skip a report
        (S.ACCEPTED, S.FINISHED, True),  # killed before placement
        (S.STARTED, S.START_INITIATED, False),  # stale report
        (S.FINISHED, S.STARTED, False),  # nothing leaves Finished
        (S.FINISHED, S.FINISHED, False),
        (S.STARTED, S.STARTED, False),
    ],
)
def test_transitions(current: TaskState, new: TaskState, allowed: bool) -> None:
    assert can_transition(current, new) is allowed
    if not allowed:
        with pytest.raises(TransitionError):
            check_transition(current, new)


def test_system_errors_are_crashed_and_lost_only() -> None:
    assert {r for r in FinishReason if r.system_error} == {FinishReason.CRASHED, FinishReason.LOST}


def test_active_states() -> None:
    assert {s for s in TaskState if s.active} == {S.LAUNCHED, S.START_INITIATED, S.STARTED, S.KILL_INITIATED}
