"""One spelling of a scheduler choice (entmtp.schedule.spec)."""
import pytest

from entmtp.bench.contenders import BANK_METHODS, bank_method_spec
from entmtp.errors import UsageError
from entmtp.schedule.spec import RATE_SIGNALS, SCHEDULERS, SchedulerSpec


def test_both_spellings_parse_to_one_spec_and_print_canonically():
    assert SchedulerSpec.parse("rate:accept") == SchedulerSpec.parse("rate-accept") == SchedulerSpec("rate", "accept")
    assert str(SchedulerSpec("rate", "accept")) == "rate:accept"
    assert SchedulerSpec("rate", "accept").method == "rate-accept"
    assert SchedulerSpec.parse("static-best") == SchedulerSpec("static-best") and str(SchedulerSpec("oracle")) == "oracle"
    for scheduler in SCHEDULERS:
        assert SchedulerSpec.parse(str(SchedulerSpec(scheduler))) == SchedulerSpec(scheduler)
    for signal in RATE_SIGNALS:
        spec = SchedulerSpec("rate", signal)
        assert SchedulerSpec.parse(str(spec)) == SchedulerSpec.parse(spec.method) == spec


def test_bad_specs_name_the_problem():
    with pytest.raises(UsageError, match="unknown scheduler 'fastest'"):
        SchedulerSpec.parse("fastest")
    with pytest.raises(UsageError, match="unknown signal 'vibes'"):
        SchedulerSpec.parse("rate:vibes")
    with pytest.raises(UsageError, match="the entropy scheduler takes no signal"):
        SchedulerSpec("entropy", "accept")


def test_rate_without_a_signal_takes_the_banks():
    assert SchedulerSpec("rate").with_signal("probe") == SchedulerSpec("rate", "probe")
    assert SchedulerSpec("rate", "now").with_signal("probe") == SchedulerSpec("rate", "now")
    assert SchedulerSpec("entropy").with_signal("probe") == SchedulerSpec("entropy")


def test_every_bench_bank_method_is_a_spec():
    assert bank_method_spec("entmtp") is None
    for name in BANK_METHODS[1:]:
        assert bank_method_spec(name).method == name
