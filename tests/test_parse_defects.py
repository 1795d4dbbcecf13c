"""Every defect the issue lists has a defined outcome: recorded, never raised."""

from __future__ import annotations

import time

import pytest

from gateway.pipeline.parse import parse
from tests.bodies_helpers import (
    b_word,
    base_headers,
    deliver,
    delivered_text,
    message,
    multipart,
    text_part,
)


def mixed(parts: list[bytes], content_type: str = 'multipart/mixed; boundary="b"') -> bytes:
    return message(base_headers(Content_Type=content_type), multipart("mixed", "b", parts))


def attachment(name_params: str, data: bytes = b"%PDF-1.4 fake") -> bytes:
    return (f"Content-Type: application/pdf\nContent-Disposition: attachment; {name_params}\n"
            "Content-Transfer-Encoding: 7bit\n\n").encode() + data


def outcome(raw: bytes):  # type: ignore[no-untyped-def]
    result, out = deliver(raw)
    return result, out, delivered_text(raw)


def test_unterminated_multipart_still_delivers_its_parts() -> None:
    raw = mixed([text_part("本文です", "utf-8")]).replace(b"--b--\r\n", b"")
    result, _, text = outcome(raw)
    assert "本文です" in text
    assert "multipart_unterminated" in result.report.defects


@pytest.mark.parametrize(("content_type", "code"), [
    ("multipart/mixed", "multipart_without_boundary"),
    ('multipart/mixed; boundary="nowhere"', "multipart_boundary_missing"),
])
def test_unsplittable_multipart_is_held_not_guessed(content_type: str, code: str) -> None:
    """A multipart we cannot split is kept whole in quarantine; the reader is told."""
    raw = mixed([text_part("隠れた本文", "utf-8")], content_type)
    result, _, text = outcome(raw)
    assert code in result.report.defects
    assert "隠れた本文" not in text
    assert [h.part for h in result.held] == ["1"]
    assert "形式に不審な点" in text and code in text


def test_multipart_with_base64_transfer_encoding_is_held() -> None:
    raw = message(base_headers(Content_Type='multipart/mixed; boundary="b"',
                               Content_Transfer_Encoding="base64"),
                  multipart("mixed", "b", [text_part("x", "utf-8")]))
    result, _, _ = outcome(raw)
    assert "multipart_encoded" in result.report.defects
    assert len(result.held) == 1


def test_bad_base64_is_decoded_leniently_and_recorded() -> None:
    part = (b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
            b"5pel5pys6Kqe!!\n44Gn44GZ*\n")
    result, _, text = outcome(mixed([part]))
    assert "日本語です" in text
    assert "base64_invalid" in result.report.defects


def test_bad_quoted_printable_is_kept_and_recorded() -> None:
    part = (b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable"
            b"\n\n=E6=97=A5=E6=9C=AC =ZZ end\n")
    result, _, text = outcome(mixed([part]))
    assert "日本 =ZZ end" in text
    assert "quoted_printable_invalid" in result.report.defects


def test_bare_cr_and_bare_lf_become_line_breaks_and_are_recorded() -> None:
    raw = (b"From: a@example.com\r\nSubject: x\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           b"line1\rline2\nline3\r\n")
    result, out, text = outcome(raw)
    assert "line1\nline2\nline3" in text
    assert {"bare_cr", "bare_lf"} <= set(result.report.defects)
    assert b"\r\n" in out and b"\rl" not in out


def test_two_content_types_on_a_multipart_quarantine_the_message() -> None:
    raw = mixed([text_part("x", "utf-8")]).replace(
        b"MIME-Version: 1.0\r\n", b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n")
    result, _, text = outcome(raw)
    assert result.report.verdict.value == "quarantined"
    assert result.report.reason == "ambiguous_mime_structure"
    assert "content_type_duplicate" in result.report.defects
    assert "全体を隔離しました" in text and "二通りに読めます" in text
    assert "隔離ID: Q-TEST）" in text


def test_two_boundaries_quarantine_the_message() -> None:
    raw = mixed([text_part("x", "utf-8")], 'multipart/mixed; boundary="b"; boundary="c"')
    result, _, _ = outcome(raw)
    assert result.report.reason == "ambiguous_mime_structure"
    assert "boundary_duplicate" in result.report.defects


def test_two_content_types_on_a_leaf_make_it_an_attachment() -> None:
    """text/plain or text/html? Neither is trusted as body: the part is held."""
    part = b"Content-Type: text/plain\nContent-Type: text/html\n\n<script>x</script>\n"
    result, _, text = outcome(mixed([text_part("本文", "utf-8"), part]))
    assert "script" not in text
    assert [h.part for h in result.held] == ["2"]
    removed = next(a for a in result.report.actions if a.part == "2")
    assert removed.action.value == "removed" and removed.code == "blocked_type"


def test_filename_and_filename_star_disagreeing() -> None:
    """Both names are kept for the attachment checks; the part is suspicious."""
    raw = mixed([text_part("本文", "utf-8"), attachment(
        "filename=\"invoice.pdf\"; filename*=UTF-8''invoice.pdf.exe")])
    parsed = parse(raw)
    leaf = parsed.leaves[1]
    assert set(leaf.names) == {"invoice.pdf", "invoice.pdf.exe"}
    assert leaf.filename == "invoice.pdf.exe"
    assert leaf.suspicious == "filename_conflict"
    assert "filename_conflict" in parsed.defects


def test_rfc2231_continuation_with_a_gap() -> None:
    raw = mixed([attachment("filename*0*=UTF-8''%E8%A6%8B; filename*2=.exe")])
    parsed = parse(raw)
    assert parsed.leaves[0].suspicious == "rfc2231_gap"
    assert "rfc2231_gap" in parsed.defects


def test_rfc2231_and_rfc2047_japanese_names_decode() -> None:
    raw = mixed([attachment("filename*=UTF-8''%E8%A6%8B%E7%A9%8D%E6%9B%B8.pdf"),
                 attachment(f'filename="{b_word("報告書①", "ISO-2022-JP")}.pdf"')])
    names = [leaf.filename for leaf in parse(raw).leaves]
    assert names == ["見積書.pdf", "報告書①.pdf"]


def test_raw_shift_jis_filename_is_decoded() -> None:
    """Some Japanese mailers put Shift_JIS bytes straight into the header."""
    part = ('Content-Type: application/pdf\nContent-Disposition: attachment; '
            'filename="御見積書①.pdf"\n\n%PDF').encode("cp932")
    assert parse(mixed([part])).leaves[0].filename == "御見積書①.pdf"


def test_unknown_transfer_encoding_is_held() -> None:
    part = b"Content-Type: text/plain\nContent-Transfer-Encoding: x-gzip64\n\nabc\n"
    result, _, _ = outcome(mixed([part]))
    assert "transfer_encoding_unknown" in result.report.defects
    assert len(result.held) == 1


def test_duplicate_from_is_recorded_and_the_first_one_delivered() -> None:
    raw = message([*base_headers(), ("From", "Other <other@evil.example>")], b"x")
    result, out, _ = outcome(raw)
    assert "from_duplicate" in result.report.defects
    assert b"evil.example" not in out


@pytest.mark.parametrize("raw", [
    b"", b"\r\n", b"Subject: only headers", b"no header at all\r\n\r\nbody",
    b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n",
    b"Content-Type: text/plain; charset=\"\r\n\r\n\xff\xfe\x00",
    b"Content-Type: /\r\nContent-Disposition: ;;;=\r\n\r\nx",
])
def test_garbage_never_raises(raw: bytes) -> None:
    result, out, _ = outcome(raw)
    assert out.startswith(b"Subject:") or b"\r\nX-Mugaika-Verdict:" in out
    assert result.report.verdict.value in ("clean", "sanitized", "quarantined")


def nested(depth: int) -> bytes:
    head = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i)
                    for i in range(depth))
    return b"From: a@example.com\nSubject: deep\n" + head + b"Content-Type: text/plain\n\nx\n"


def test_thousand_deep_nesting_is_quarantined_fast() -> None:
    start = time.perf_counter()
    result, _, text = outcome(nested(1000))
    assert time.perf_counter() - start < 2
    assert result.report.reason == "mime_depth_exceeded"
    assert "入れ子の深さが上限を超えています" in text
    assert result.held[0].data == nested(1000)


def test_twenty_thousand_parts_are_quarantined_fast() -> None:
    raw = (b"From: a@example.com\nContent-Type: multipart/mixed; boundary=b\n\n"
           + b"--b\nContent-Type: text/plain\n\nx\n" * 20_000 + b"--b--\n")
    start = time.perf_counter()
    result, _, _ = outcome(raw)
    assert time.perf_counter() - start < 2
    assert result.report.reason == "mime_parts_exceeded"


def test_depth_within_limits_is_delivered() -> None:
    result, _, text = outcome(nested(10))
    assert result.report.verdict.value == "clean"
    assert text.endswith("x\n")


def test_header_folded_over_half_a_million_lines_is_refused_fast() -> None:
    raw = b"From: a@example.com\nSubject: x\n" + b" y\n" * 500_000 + b"\nbody"
    start = time.perf_counter()
    result, _, _ = outcome(raw)
    assert time.perf_counter() - start < 3
    assert result.report.reason == "header_fields_exceeded"
