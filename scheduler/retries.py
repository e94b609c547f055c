"""What replaces a task that ended: retry or not, after how long, and the streak counters carried on.

Pure decisions, no state: `decide` takes the ended task's reason, how long it ran, the counters of
its index, the job's kind and the configuration, and returns what to do. `core.Scheduler` applies it.

- `crashed` / `lost` (platform faults) are retried with back-off `min(system_backoff_max,
  system_backoff_base * 2^crashes)`, never counted against the user's retries; `crash_loop_threshold`
  in a row marks the index crash-looping.
- Batch: `failed` consumes `retryPolicy.retries` (waiting `delaySeconds`); any other ending, or no
  retry left, settles the index with that reason.
- Service: every ending is replaced; a user failure backs off `min(service_failure_backoff_max,
  2^failures - 1)`.
- A task that stayed Started `streak_reset_after` seconds clears its index's streaks first.
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.config import SchedulerConfig
from titus_common.jobspec import RetryPolicy
from titus_common.states import FinishReason

__all__ = ["Counters", "Replace", "Settle", "decide", "is_crash_looping"]


@dataclass(frozen=True)
class Counters:
    """An index's history, carried from each task to its replacement."""

    retries_used: int = 0  # user retries consumed
    system_retries: int = 0  # replacements after platform faults
    consecutive_crashes: int = 0
    consecutive_failures: int = 0


@dataclass(frozen=True)
class Replace:
    """Start a replacement after `delay` seconds, with these counters."""

    delay: float
    counters: Counters
    crash_looping: bool = False


@dataclass(frozen=True)
class Settle:
    """No replacement: a batch index is done, with this outcome."""

    result: FinishReason


def decide(
    reason: FinishReason,
    ran_seconds: float | None,
    counters: Counters,
    batch_retry: RetryPolicy | None,
    config: SchedulerConfig,
) -> Replace | Settle:
    """`ran_seconds`: Started → Finished (None: never started). `batch_retry`: the batch job's retry
    policy; None for a service job."""
    ran_long = ran_seconds is not None and ran_seconds >= config.streak_reset_after
    crashes = 0 if ran_long else counters.consecutive_crashes
    failures = 0 if ran_long else counters.consecutive_failures
    if reason.system_error:
        # crashed ≠ failed: platform faults are retried with back-off and cost the user nothing.
        after = Counters(
            retries_used=counters.retries_used,
            system_retries=counters.system_retries + 1,
            consecutive_crashes=crashes + 1,
            consecutive_failures=failures,
        )
        delay = min(config.system_backoff_max, config.system_backoff_base * 2**crashes)
        return Replace(delay, after, crash_looping=is_crash_looping(after.consecutive_crashes, config))
    if batch_retry is not None:
        if reason is FinishReason.FAILED and counters.retries_used < batch_retry.retries:
            after = Counters(
                retries_used=counters.retries_used + 1,
                system_retries=counters.system_retries,
                consecutive_failures=failures + 1,
            )
            return Replace(batch_retry.delay_seconds, after)
        return Settle(reason)
    # Service: keep the desired count. A user failure restarts with back-off.
    failed = reason is FinishReason.FAILED
    after = Counters(
        retries_used=counters.retries_used,
        system_retries=counters.system_retries,
        consecutive_crashes=crashes,
        consecutive_failures=failures + 1 if failed else 0,
    )
    delay = min(config.service_failure_backoff_max, 2.0**failures - 1) if failed else 0.0
    return Replace(delay, after)


def is_crash_looping(consecutive_crashes: int, config: SchedulerConfig) -> bool:
    return consecutive_crashes >= config.crash_loop_threshold
