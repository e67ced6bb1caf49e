"""Retention and collection as pure decisions: entry names, rules, policies, the plan, settings."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bucketdav.settings import (
    Duration,
    SettingError,
    TemplateKeep,
    load_settings,
)
from bucketdav.store.collect import policy_of
from bucketdav.store.entries import Series, parse_entry
from bucketdav.store.references import BlobFacts, Snapshot, plan
from bucketdav.store.retention import DAY, Policy, Rules, expired

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def name(stamp: str, index: int = 0, stem: str = "app", ext: str = ".tgz") -> str:
    return f"{stem}.{stamp}.{index}{ext}"


def day(n: int) -> str:
    """The stamp of noon, n days before NOW."""
    return datetime.fromtimestamp(NOW.timestamp() - n * DAY, UTC).strftime("%Y%m%d.%H%M")


# -- entry names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "series", "stamp", "index"),
    [
        ("README.20261128.0942.0.md", Series("README", ".md"), "20261128.0942", 0),
        ("docs.20261128.0942.12", Series("docs", ""), "20261128.0942", 12),
        ("r.20260101.1200.3.tar.gz", Series("r", ".tar.gz"), "20260101.1200", 3),
        ("a.b.20260101.1200.0.txt", Series("a.b", ".txt"), "20260101.1200", 0),
        # A stem holding a stamp of its own is read as the upload named it.
        (
            "x.20250101.0000.1.20260102.1200.4.txt",
            Series("x.20250101.0000.1", ".txt"),
            "20260102.1200",
            4,
        ),
    ],
)
def test_parse_entry_reads_stem_stamp_index_and_extension(text, series, stamp, index):
    entry = parse_entry(text)
    assert entry is not None
    assert (entry.series, entry.stamp, entry.index) == (series, stamp, index)
    assert entry.series.stamped(stamp, index) == text


@pytest.mark.parametrize(
    "text",
    [
        "README.latest.md",  # a latest link
        "app.20260101.1200.tgz",  # no index
        "app.20261399.1200.0.tgz",  # no such day
        "app.20260101.2460.0",  # no such minute
        "app.2026010.1200.0",  # a short stamp
        ".20260101.1200.0",  # no stem
        "notes.txt",
        "app.20260101.1200.0.tar.gz.part",  # a second extension
        "app.20260101.1200.0123456789",  # an index no upload makes
    ],
)
def test_parse_entry_refuses_names_that_are_not_entries(text):
    assert parse_entry(text) is None


# -- rules ----------------------------------------------------------------------------------


def test_keep_last_keeps_the_newest_of_each_name():
    names = [name(day(d)) for d in range(5)] + [name(day(d), stem="lib") for d in range(2)]
    gone = expired(names, rules=[Rules(keep_last=2)], now=NOW)
    assert gone == [
        (name(day(4)), "keep last 2"),
        (name(day(3)), "keep last 2"),
        (name(day(2)), "keep last 2"),
    ]


def test_keep_last_orders_by_stamp_then_index():
    names = [name(day(1), 0), name(day(1), 1), name(day(1), 2), name(day(0), 0)]
    gone = [n for n, _ in expired(names, rules=[Rules(keep_last=2)], now=NOW)]
    assert gone == [name(day(1), 0), name(day(1), 1)]


def test_keep_days_keeps_entries_younger_than_the_age():
    names = [name(day(d)) for d in (0, 29, 30, 31, 400)]
    gone = expired(names, rules=[Rules(keep_days=30 * DAY)], now=NOW)
    assert gone == [
        (name(day(400)), "older than 30 days"),
        (name(day(31)), "older than 30 days"),
        (name(day(30)), "older than 30 days"),
    ]


def test_both_rules_remove_only_what_neither_keeps():
    names = [name(day(d)) for d in (0, 1, 2, 50, 60)]
    rules = Rules(keep_last=2, keep_days=10 * DAY)
    gone = expired(names, rules=[rules], now=NOW)
    assert gone == [
        (name(day(60)), "older than 10 days, keep last 2"),
        (name(day(50)), "older than 10 days, keep last 2"),
    ]


def test_the_latest_target_is_always_kept():
    names = [name(day(d)) for d in range(4)]
    gone = expired(names, rules=[Rules(keep_last=1)], now=NOW, latest_targets=[name(day(3))])
    assert [n for n, _ in gone] == [name(day(2)), name(day(1))]


def test_names_that_are_not_entries_are_left_alone():
    names = ["app.latest.tgz", "notes.txt", "app.20261399.1200.0.tgz", "app.20260101.1200.tgz"]
    assert expired(names, rules=[Rules(keep_last=1, keep_days=1)], now=NOW) == []


def test_no_active_rule_keeps_everything():
    names = [name(day(d)) for d in range(5)]
    assert expired(names, rules=[Rules()], now=NOW) == []
    assert expired(names, rules=[], now=NOW) == []


def test_keep_beats_delete_when_two_templates_make_a_folder():
    names = [name(day(d)) for d in range(5)]
    gone = expired(names, rules=[Rules(keep_last=1), Rules(keep_last=3)], now=NOW)
    assert [n for n, _ in gone] == [name(day(4)), name(day(3))]
    assert expired(names, rules=[Rules(keep_last=1), Rules()], now=NOW) == []


# -- policies -------------------------------------------------------------------------------


def test_policy_template_rules_replace_the_global_ones_for_its_folders():
    nightly = Rules(keep_last=10)
    policy = Policy(
        default=Rules(keep_days=90 * DAY),
        templates=((("nightly", None), nightly), (("user", None, None), None)),
    )
    assert policy.rules_for(["nightly", "app"]) == [nightly]
    assert policy.rules_for(["user", "bob", "demo"]) == [Rules(keep_days=90 * DAY)]
    # A folder no current template makes (one since removed) follows the global rules.
    assert policy.rules_for(["old", "thing"]) == [Rules(keep_days=90 * DAY)]


def test_policy_names_from_other_templates_are_untouched():
    policy = Policy(
        default=Rules(), templates=((("a", None), Rules(keep_last=1)), (("b", None), None))
    )
    names = [name(day(d)) for d in range(3)]
    assert expired(names, rules=policy.rules_for(["b", "x"]), now=NOW) == []
    assert len(expired(names, rules=policy.rules_for(["a", "x"]), now=NOW)) == 2
    # "a/x/y" is one level deeper than template a makes: the global rules (none) apply.
    assert expired(names, rules=policy.rules_for(["a", "x", "y"]), now=NOW) == []


def test_policy_of_settings_reads_templates_and_their_rules():
    settings = load_settings(
        environ={
            "REPLICATE_0": "nightly/${Project}",
            "REPLICATE_1": "user/${User}/${Topic}",
            "REPLICATE_0_KEEP_LAST": "10",
            "BUCKETDAV_KEEP_DAYS": "90",
        }
    )
    policy = policy_of(settings)
    assert policy.default == Rules(keep_days=90 * DAY)
    assert policy.templates == (
        (("nightly", None), Rules(keep_last=10)),
        (("user", None, None), None),
    )


# -- the collection plan --------------------------------------------------------------------


def facts(nlink: int = 1, ctime: float = 0.0, size: int = 7) -> BlobFacts:
    return (nlink, ctime, size)


def test_plan_takes_blobs_linked_from_nowhere_and_older_than_the_cutoff():
    snapshot = Snapshot(
        blobs={"aa": facts(), "bb": facts(nlink=2), "cc": facts(ctime=100.0), "dd": facts()},
        blob_refs={"dd"},
    )
    doomed = plan(snapshot, cutoff=50.0, now=8 * DAY + 1)
    assert [(d.kind, d.digest, d.size, d.why) for d in doomed] == [
        ("blob", "aa", 7, "unreferenced 8 days")
    ]


def test_plan_a_referenced_tree_keeps_its_archive_and_compressed_blobs():
    snapshot = Snapshot(
        blobs={"tgz": facts(), "tar": facts(), "gz": facts(), "plain": facts()},
        trees={"tar": 0.0},
        notes={"tgz": "tar", "gz": "plain"},
        tree_refs={"tar"},
    )
    doomed = plan(snapshot, cutoff=50.0, now=60.0)
    assert [d.digest for d in doomed] == ["gz", "plain"]


def test_plan_a_referenced_gz_keeps_its_decompressed_blob():
    snapshot = Snapshot(blobs={"gz": facts(nlink=2), "plain": facts()}, notes={"gz": "plain"})
    assert plan(snapshot, cutoff=50.0, now=60.0) == []


def test_plan_an_unreferenced_tree_goes_before_its_sources():
    snapshot = Snapshot(
        blobs={"tgz": facts(), "tar": facts(), "other": facts()},
        trees={"tar": 0.0, "young": 100.0},
        notes={"tgz": "tar"},
    )
    doomed = plan(snapshot, cutoff=50.0, now=60.0)
    assert [(d.kind, d.digest) for d in doomed] == [
        ("tree", "tar"),
        ("blob", "tgz"),
        ("blob", "other"),
        ("blob", "tar"),
    ]


# -- settings -------------------------------------------------------------------------------


def test_settings_retention_defaults_remove_nothing():
    settings = load_settings(environ={})
    assert (settings.keep_last, settings.keep_days, settings.gc_unreferenced) == (None, None, None)
    assert settings.gc_interval == Duration(3600)
    assert settings.collects is False


def test_settings_durations_and_per_template_rules():
    settings = load_settings(
        environ={
            "REPLICATE_2": "nightly/${P}",
            "REPLICATE_2_KEEP_LAST": "10",
            "REPLICATE_2_KEEP_DAYS": "12h",
            "BUCKETDAV_GC_UNREFERENCED_DAYS": "0",
            "BUCKETDAV_GC_INTERVAL": "90m",
            "BUCKETDAV_KEEP_DAYS": "30",
        }
    )
    assert settings.replicate_keep == (TemplateKeep("REPLICATE_2", 10, Duration(12 * 3600)),)
    assert settings.gc_unreferenced == Duration(0)
    assert settings.gc_interval == Duration(5400)
    assert settings.keep_days == Duration(30 * DAY)
    assert settings.collects is True
    public = settings.public()
    assert public["BUCKETDAV_KEEP_DAYS"] == "30d"
    assert public["BUCKETDAV_GC_INTERVAL"] == "90m"
    assert public["REPLICATE_2_KEEP_LAST"] == 10
    assert public["REPLICATE_2_KEEP_DAYS"] == "12h"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"BUCKETDAV_KEEP_LAST": "0"}, "BUCKETDAV_KEEP_LAST"),
        ({"BUCKETDAV_KEEP_LAST": "ten"}, "BUCKETDAV_KEEP_LAST"),
        ({"BUCKETDAV_KEEP_DAYS": "0"}, "BUCKETDAV_KEEP_DAYS"),
        ({"BUCKETDAV_KEEP_DAYS": "3w"}, "BUCKETDAV_KEEP_DAYS"),
        ({"BUCKETDAV_GC_UNREFERENCED_DAYS": "-1"}, "BUCKETDAV_GC_UNREFERENCED_DAYS"),
        ({"BUCKETDAV_GC_INTERVAL": "0"}, "BUCKETDAV_GC_INTERVAL"),
        ({"BUCKETDAV_GC_INTERVAL": "1.5h"}, "BUCKETDAV_GC_INTERVAL"),
        ({"REPLICATE_4_KEEP_LAST": "3"}, "REPLICATE_4_KEEP_LAST"),
        ({"REPLICATE_0": "a/${B}", "REPLICATE_0_KEEP_DAYS": "x"}, "REPLICATE_0_KEEP_DAYS"),
    ],
)
def test_settings_bad_retention_values_name_the_setting(env, named):
    with pytest.raises(SettingError) as caught:
        load_settings(environ=env)
    assert caught.value.name == named
