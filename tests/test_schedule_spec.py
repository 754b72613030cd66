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


# --------------------------------------------------------------------------- names the user typed

def test_an_unknown_bank_name_is_a_usage_mistake_but_a_bad_bank_file_is_not(tmp_path):
    from entmtp.errors import EntmtpError
    from entmtp.schedule.bank import load_bank

    with pytest.raises(UsageError, match="unknown bank 'nope'; shipped banks: .*smollm2") as caught:
        load_bank("nope")
    assert caught.value.exit_code == 2
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "entmtp-bank/1"')
    for path in (tmp_path / "absent.json", broken):
        with pytest.raises(EntmtpError) as caught:
            load_bank(path)
        assert type(caught.value) is EntmtpError and caught.value.exit_code == 1


def test_a_tree_the_bank_lacks_is_a_usage_mistake():
    from entmtp.schedule.bank import bank_from_document, bank_policy, list_banks, read_bank_document
    from entmtp.tune.source import derive_bank

    source, where = read_bank_document(list_banks()[0])
    curve = [{"nodes": 0, "depth": 0, "ms": 20.0}, {"nodes": 1, "depth": 1, "ms": 40.0},
             {"nodes": 64, "depth": 4, "ms": 400.0}]
    bank = bank_from_document(derive_bank(source, curve), where)
    assert bank_policy(bank, "static", tree=bank.trees[0].name).trees == (bank.trees[0],)
    with pytest.raises(UsageError, match=f"bank '{bank.name}' has no tree 'nope'; its trees: n0") as caught:
        bank_policy(bank, "static", tree="nope")
    assert caught.value.exit_code == 2


def test_a_missing_shipped_bank_names_the_model_heads_and_task():
    from entmtp.schedule.bank import list_banks, shipped_bank_document

    document, where = shipped_bank_document("smollm2-135m-instruct", "hydra", "gsm8k")
    assert document["name"] == "smollm2-135m-instruct-hydra-gsm8k" and document["name"] in list_banks()
    with pytest.raises(UsageError, match="no shipped bank for model 'my-llama' with medusa heads on task 'gsm8k'; "
                                         r"calibrate one \(entmtp calibrate --task gsm8k") as caught:
        shipped_bank_document("my-llama", "medusa", "gsm8k")
    assert caught.value.exit_code == 2 and "unknown bank" not in str(caught.value)
