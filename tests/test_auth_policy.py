"""What sender authentication decides, and how the rebuilt message and notice say it
(issue 21): the policy table, the headers, the words. The checks themselves are in
tests/test_sender_auth.py; through a real `mugaika serve` in tests/test_sender_auth_e2e.py.
"""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import pytest

from gateway.pipeline.auth_policy import DMARC_FAIL, SPOOFED, Judgement, judge
from gateway.pipeline.sender_auth import AuthResults
from gateway.queue.envelope import Envelope
from gateway.queue.spool import Entry, RetryState
from gateway.queue.worker import sanitize_stage
from gateway.settings import Settings, Tenant

SETTINGS = Settings(accepted_domains=["city.example.lg.jp"],
                    tenants=(Tenant(id="gose", name="御所市", domains=("city.gose.example.lg.jp",)),))


def results(dmarc: str = "pass", policy: str = "reject", spf: str = "pass",
            dkim: tuple[tuple[str, str], ...] = (("pass", "partner.example.jp"),),
            from_domain: str = "partner.example.jp") -> AuthResults:
    return AuthResults(spf=spf, spf_domain="partner.example.jp", dkim=dkim, dmarc=dmarc,
                       dmarc_policy=policy, from_domain=from_domain, arc="none")


@pytest.mark.parametrize(("auth", "from_header", "expected"), [
    (results(), "担当 <tanto@partner.example.jp>", Judgement()),
    (results("fail", "reject"), "tanto@partner.example.jp", Judgement("quarantine", (DMARC_FAIL,))),
    (results("fail", "quarantine"), "tanto@partner.example.jp",
     Judgement("quarantine", (DMARC_FAIL,))),
    (results("fail", "none"), "tanto@partner.example.jp", Judgement()),  # p=none: report only
    (results("temperror", ""), "tanto@partner.example.jp", Judgement()),  # DNS: never alone
    (results("none", ""), "市長 <mayor@city.example.lg.jp>", Judgement("quarantine", (SPOOFED,))),
    (results("none", ""), "mayor@mail.city.gose.example.lg.jp", Judgement("quarantine", (SPOOFED,))),
    (results("none", ""), '"mayor@city.example.lg.jp" <x@evil.example>',
     Judgement("quarantine", (SPOOFED,))),  # our address shown in the display name
    (results("temperror", ""), "mayor@city.example.lg.jp", Judgement("quarantine", (SPOOFED,))),
    (results("pass", from_domain="city.example.lg.jp"), "mayor@city.example.lg.jp",
     Judgement()),  # our own, authenticated
    # a partner's (or an attacker's) mail that passes DMARC for its own domain but shows
    # our address in its display name: passing for another domain clears nothing
    (results("pass"), '"mayor@city.example.lg.jp" <tanto@partner.example.jp>',
     Judgement("quarantine", (SPOOFED,))),
    (results("none", ""), "x@notcity.example.lg.jp", Judgement()),  # not a subdomain of ours
])
def test_the_policy_table(auth: AuthResults, from_header: str, expected: Judgement) -> None:
    assert judge(auth, from_header, SETTINGS) == expected


def test_tag_instead_of_quarantine_and_none_for_dmarc() -> None:
    tagging = SETTINGS.model_copy(update={"spoof_action": "tag", "dmarc_fail_action": "tag"})
    both = judge(results("fail", "reject"), "mayor@city.example.lg.jp", tagging)
    assert both == Judgement("tag", (DMARC_FAIL, SPOOFED))
    ignoring = SETTINGS.model_copy(update={"dmarc_fail_action": "none"})
    assert judge(results("fail", "reject"), "a@partner.example.jp", ignoring) == Judgement()


def _entry(from_header: str) -> Entry:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = from_header, "staff@city.example.lg.jp", "請求書"
    msg.set_content("お支払いをお願いします。 https://pay.example.net/x")
    env = Envelope("a@evil.example", ("staff@city.example.lg.jp",), "203.0.113.9", "evil")
    return Entry("AUTH1", env, msg.as_bytes(), RetryState())


def _delivered(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def test_a_spoof_is_held_whole_and_the_notice_says_why() -> None:
    processed = sanitize_stage(_entry("市長 <mayor@city.example.lg.jp>"), SETTINGS, None,
                               auth=results("none", "", spf="fail", dkim=()))
    assert processed.report.verdict.value == "quarantined" and processed.report.reason == SPOOFED
    [held] = processed.held
    assert held.part == "0" and b"pay.example.net" in held.data
    out = _delivered(processed.output)
    assert out["X-Mugaika-Verdict"] == "quarantined"
    assert out["Authentication-Results"].startswith("mugaika.localdomain;")
    assert "spf=fail" in out["Authentication-Results"]
    assert out["X-Mugaika-Sanitized"].split() == ["quarantined", "spf-fail", "spoofed"]
    body = str(out.get_body(preferencelist=("plain",)).get_content())  # type: ignore[union-attr]
    assert "組織のドメインを名乗っていますが、認証に合格していません" in body
    assert "pay.example.net" not in body  # held whole: nothing of it is delivered


def test_a_tagged_message_is_delivered_with_the_warning() -> None:
    tagging = SETTINGS.model_copy(update={"spoof_action": "tag"})
    processed = sanitize_stage(_entry("mayor@city.example.lg.jp"), tagging, None,
                               auth=results("none", "", dkim=()))
    out = _delivered(processed.output)
    assert out["Subject"] == "[なりすまし注意][無害化] 請求書"
    assert "auth-tagged" in out["X-Mugaika-Sanitized"].split()
    body = str(out.get_body(preferencelist=("plain",)).get_content())  # type: ignore[union-attr]
    assert "なりすましの疑いがあります" in body and "hxxps://pay.example.net/x" in body
    assert processed.report.extra["auth"]["action"] == "tag"


def test_a_clean_authenticated_message_gets_the_results_and_no_warning() -> None:
    processed = sanitize_stage(_entry("tanto@partner.example.jp"), SETTINGS, None,
                               auth=results())
    out = _delivered(processed.output)
    assert "dmarc=pass" in out["Authentication-Results"]
    assert "なりすまし" not in out.as_string()
    assert "link-defanged" in out["X-Mugaika-Sanitized"].split()


def test_without_checks_there_is_no_authentication_header() -> None:
    processed = sanitize_stage(_entry("mayor@city.example.lg.jp"), SETTINGS, None)
    out = _delivered(processed.output)
    assert out["Authentication-Results"] is None and out["X-Mugaika-Verdict"] == "clean"
    assert out["X-Mugaika-Sanitized"].split() == ["link-defanged"]
