"""The "allowed senders" setting (worklist/senders.py), without a network."""

import pytest
from django.core.exceptions import ValidationError

from worklist.models import WorklistSettings
from worklist.senders import SenderRules

RIS_LAN = "10.1.0.0/16"


def refusal(text, address="10.1.2.3", application="RIS", facility="HOSP"):
    return SenderRules.parse(text).refusal(address, application, facility)


def test_an_empty_list_lets_anyone_send():
    rules = SenderRules.parse(" \n# nobody listed yet\n")
    assert rules.allows_anyone()
    assert rules.refusal("203.0.113.9", "ANY", "THING") == ""


def test_an_address_in_a_listed_network_may_send_and_one_outside_may_not():
    assert refusal(RIS_LAN, address="10.1.200.7") == ""
    assert "203.0.113.9 is not an allowed sender" in refusal(RIS_LAN, address="203.0.113.9")


def test_a_single_address_and_an_ipv6_network_are_entries_too():
    text = "192.0.2.10\n2001:db8::/32  # the RIS cluster"
    assert refusal(text, address="192.0.2.10") == ""
    assert refusal(text, address="2001:db8::5") == ""
    assert refusal(text, address="192.0.2.11") != ""


def test_an_ipv4_mapped_ipv6_address_is_compared_as_ipv4():
    assert refusal(RIS_LAN, address="::ffff:10.1.2.3") == ""


def test_an_address_that_is_not_an_ip_is_never_listed():
    assert refusal(RIS_LAN, address="unknown") != ""


def test_a_pair_is_compared_with_msh_3_and_msh_4_and_a_star_matches_anything():
    assert refusal("RIS^HOSP") == ""
    assert "HIS^HOSP is not an allowed sender" in refusal("RIS^HOSP", application="HIS")
    assert refusal("RIS^*", facility="ELSEWHERE") == ""
    assert refusal("RIS^", facility="") == ""
    assert refusal("RIS^", facility="HOSP") != ""


def test_with_addresses_and_pairs_listed_a_message_must_match_both():
    text = f"{RIS_LAN}\nRIS^HOSP"
    assert refusal(text) == ""
    assert refusal(text, address="203.0.113.9") != "", "a forged MSH-3/MSH-4 from elsewhere"
    assert refusal(text, application="HIS") != "", "another application on the RIS's network"


@pytest.mark.parametrize("line", ["ris.example.org", "10.1.0.0/33", "RIS^HOSP^X", "^HOSP"])
def test_a_line_that_is_neither_an_address_nor_a_pair_is_refused_with_its_number(line):
    with pytest.raises(ValueError, match=r"line 2: "):
        SenderRules.parse(f"10.0.0.1\n{line}")


def test_the_settings_refuse_a_bad_list_with_the_reason(db):
    row = WorklistSettings.load()
    row.allowed_senders = "10.0.0.1\nris.example.org"
    with pytest.raises(ValidationError) as caught:
        row.full_clean()
    assert "line 2" in caught.value.message_dict["allowed_senders"][0]


def test_a_stored_list_that_no_longer_parses_lets_nobody_send(db):
    WorklistSettings.objects.update_or_create(pk=1, defaults={"allowed_senders": "not an entry"})
    rules = WorklistSettings.load().sender_rules()
    assert not rules.allows_anyone()
    assert rules.refusal("10.1.2.3", "RIS", "HOSP") != ""
