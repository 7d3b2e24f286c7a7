"""Study tokens: entropy and format, hashing at rest, expiry arithmetic,
revocation, and the links they make."""

import datetime as dt
import math
import re
from collections import Counter

import pytest
from django.db import connection
from django.utils import timezone

from dicomnodes.models import DicomServerSettings, Patient, Study
from portal.models import Accessibility, HttpSettings, StudyToken, TokenScope, add_period, hash_token, token_expiry
from portal.tokens import create_token, lookup, token_url

pytestmark = pytest.mark.archive


def a_study(study_date="20260115", patient_id="P1", uid="1.2.3.1"):
    patient, _ = Patient.objects.get_or_create(patient_id=patient_id, defaults={"patient_name": "DOE^JANE"})
    return Study.objects.create(
        study_instance_uid=uid,
        patient_record=patient,
        patient_id=patient_id,
        patient_name="DOE^JANE",
        study_date=study_date,
    )


def test_a_token_is_64_url_safe_characters_of_384_random_bits(db):
    clear = create_token(a_study()).clear
    assert re.fullmatch(r"[A-Za-z0-9_-]{64}", clear)
    assert len(clear) * 6 >= 128


def test_tokens_do_not_repeat_and_their_characters_are_spread_evenly(db):
    study = a_study()
    clears = [create_token(study).clear for _ in range(200)]
    assert len(set(clears)) == 200
    counts = Counter("".join(clears))
    # 12,800 characters over 64 symbols: a fair source gives ~200 each and an
    # entropy close to 6 bits per character.
    entropy = -sum(n / 12800 * math.log2(n / 12800) for n in counts.values())
    assert len(counts) == 64 and entropy > 5.95


def test_the_database_never_holds_the_clear_token(db):
    new = create_token(a_study())
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM portal_studytoken")
        rows = cursor.fetchall()
    dumped = repr(rows)
    assert new.clear not in dumped
    assert hash_token(new.clear) in dumped
    assert new.row.token_hash == hash_token(new.clear) != new.clear


def test_lookup_finds_the_token_by_its_hash_and_nothing_else(db):
    new = create_token(a_study())
    assert lookup(new.clear) == new.row
    assert lookup(new.clear[:-1] + ("A" if new.clear[-1] != "A" else "B")) is None
    assert lookup(new.row.token_hash) is None  # the hash is not a token
    assert lookup("") is None
    assert lookup("../../etc/passwd") is None


@pytest.mark.parametrize(
    "accessibility, expected",
    [
        (Accessibility.ONE_WEEK, dt.date(2026, 1, 22)),
        (Accessibility.ONE_MONTH, dt.date(2026, 2, 15)),
        (Accessibility.THREE_MONTHS, dt.date(2026, 4, 15)),
        (Accessibility.SIX_MONTHS, dt.date(2026, 7, 15)),
        (Accessibility.ONE_YEAR, dt.date(2027, 1, 15)),
        (Accessibility.UNLIMITED, None),
    ],
)
def test_a_token_expires_at_the_study_date_plus_the_accessibility(db, accessibility, expected):
    http = HttpSettings.load()
    http.study_accessibility = accessibility
    http.save()

    token = create_token(a_study("20260115")).row

    if expected is None:
        assert token.expires_at is None and not token.is_expired(timezone.now() + dt.timedelta(days=36500))
    else:
        assert timezone.localtime(token.expires_at) == timezone.make_aware(dt.datetime.combine(expected, dt.time.min))


@pytest.mark.parametrize(
    "day, accessibility, expected",
    [
        (dt.date(2026, 1, 31), Accessibility.ONE_MONTH, dt.date(2026, 2, 28)),
        (dt.date(2028, 1, 31), Accessibility.ONE_MONTH, dt.date(2028, 2, 29)),
        (dt.date(2026, 8, 31), Accessibility.SIX_MONTHS, dt.date(2027, 2, 28)),
        (dt.date(2026, 11, 30), Accessibility.THREE_MONTHS, dt.date(2027, 2, 28)),
        (dt.date(2028, 2, 29), Accessibility.ONE_YEAR, dt.date(2029, 2, 28)),
        (dt.date(2026, 12, 28), Accessibility.ONE_WEEK, dt.date(2027, 1, 4)),
    ],
)
def test_months_are_calendar_months_ending_on_the_last_day_when_shorter(day, accessibility, expected):
    assert add_period(day, accessibility) == expected


def test_a_study_without_a_date_counts_from_the_day_the_token_was_made(db):
    made = timezone.make_aware(dt.datetime(2026, 3, 10, 15, 30))
    expiry = token_expiry(a_study(""), Accessibility.ONE_WEEK, created_at=made)
    assert timezone.localtime(expiry) == timezone.make_aware(dt.datetime(2026, 3, 17))


def test_a_study_dated_in_the_future_counts_from_the_day_the_token_was_made(db):
    made = timezone.make_aware(dt.datetime(2026, 3, 10, 15, 30))
    for n, future in enumerate(("99991231", "20260311")):
        expiry = token_expiry(a_study(future, uid=f"1.2.3.9{n}"), Accessibility.ONE_WEEK, created_at=made)
        assert timezone.localtime(expiry) == timezone.make_aware(dt.datetime(2026, 3, 17))
    past = token_expiry(a_study("20260301", uid="1.2.3.99"), Accessibility.ONE_WEEK, created_at=made)
    assert timezone.localtime(past) == timezone.make_aware(dt.datetime(2026, 3, 8))


def test_a_token_past_its_expiry_is_expired(db):
    token = create_token(a_study("20260115")).row  # default: 1 month -> 2026-02-15
    assert not token.is_expired(timezone.make_aware(dt.datetime(2026, 2, 14, 23, 59)))
    assert token.is_expired(timezone.make_aware(dt.datetime(2026, 2, 15, 0, 0)))


def test_a_revoked_token_is_no_longer_usable_and_keeps_its_revocation_time(db):
    study = a_study(timezone.localdate().strftime("%Y%m%d"))
    token = create_token(study).row
    assert token.is_usable()
    token.revoke()
    first = token.revoked_at
    token.revoke()
    assert token.is_revoked() and not token.is_usable() and token.revoked_at == first
    assert StudyToken.objects.get(pk=token.pk).revoked_at == first


def test_each_use_is_counted_with_its_time(db):
    token = create_token(a_study()).row
    token.record_use()
    token.record_use()
    token.refresh_from_db()
    assert token.use_count == 2 and token.last_used_at is not None


def test_a_patient_token_opens_every_study_of_the_patient_and_a_study_token_one(db):
    first, second = a_study(uid="1.2.3.1"), a_study(uid="1.2.3.2")
    a_study(patient_id="OTHER", uid="1.2.3.3")
    assert set(create_token(first).row.studies()) == {first}
    assert set(create_token(first, scope=TokenScope.PATIENT).row.studies()) == {first, second}


def test_a_study_an_unknown_caller_stored_does_not_join_a_patient_link(db):
    first = a_study(uid="1.2.3.1")
    planted = a_study(uid="1.2.3.2")
    Study.objects.filter(pk=planted.pk).update(from_known_peer=False)

    assert set(create_token(first, scope=TokenScope.PATIENT).row.studies()) == {first}
    # A link made for the unknown caller's study itself still opens it.
    assert set(create_token(planted, scope=TokenScope.PATIENT).row.studies()) == {first, planted}


def test_with_any_sender_trusted_every_study_of_the_patient_joins_the_link(db):
    DicomServerSettings.objects.update_or_create(pk=1, defaults={"trust_any_sender": True})
    first, planted = a_study(uid="1.2.3.1"), a_study(uid="1.2.3.2")
    Study.objects.filter(pk=planted.pk).update(from_known_peer=False)

    assert set(create_token(first, scope=TokenScope.PATIENT).row.studies()) == {first, planted}


def http_settings(**values):
    row = HttpSettings.load()
    for name, value in values.items():
        setattr(row, name, value)
    row.save()
    return row


def test_the_link_uses_the_web_server_name_when_set(db):
    http = http_settings(web_server_name="pacs.example.org", web_port=3000)
    assert token_url("abc", http) == "http://pacs.example.org:3000/token?abc"


def test_the_link_uses_the_public_ip_without_a_name(db):
    http = http_settings(web_server_name="", public_ip="77.49.171.16", web_port=3000)
    assert token_url("abc", http) == "http://77.49.171.16:3000/token?abc"


def test_the_link_brackets_an_ipv6_public_ip(db):
    http = http_settings(public_ip="2001:db8::7", web_port=8443)
    assert token_url("abc", http) == "http://[2001:db8::7]:8443/token?abc"


def test_the_link_is_https_when_tls_is_on(db):
    http = HttpSettings(web_server_name="pacs.example.org", web_port=443, tls_enabled=True)
    assert token_url("abc", http) == "https://pacs.example.org:443/token?abc"


def test_without_an_override_the_public_ip_is_one_of_this_machines_addresses(db):
    from pacs_site.ports import machine_addresses

    detected = HttpSettings.load().effective_public_ip()
    assert detected in {addr for _, _, addr in machine_addresses()} | {"127.0.0.1"}


def test_create_token_returns_the_full_link(db):
    http_settings(web_server_name="pacs.example.org", web_port=3000)
    new = create_token(a_study())
    assert new.url == f"http://pacs.example.org:3000/token?{new.clear}"
