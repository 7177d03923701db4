"""Address generator: MIC Art. 5.1 (unit), 5.3 (personal) and 5.4 (collisions)."""

from __future__ import annotations

import itertools
import unicodedata

import pytest

from gateway.directory.addresses import (
    MAX_LOCAL_PART,
    base_local_part,
    candidates,
    fold_vietnamese,
    name_parts,
    suggest,
    unit_symbol,
)

# (full name, expected local part). Together the names carry every tone (sắc,
# huyền, hỏi, ngã, nặng) on every marked vowel (ă â ê ô ơ ư), and Đ; checked by
# test_table_covers_every_tone_on_every_marked_vowel below.
NAMES = [
    ("Đỗ Văn Bê", "dvbe"),  # MIC 5.3's own example
    ("Nguyễn Thị Minh Khai", "ntmkhai"),
    ("Trần Quốc Toản", "tqtoan"),
    ("Lê Thị Hồng Gấm", "lthgam"),
    ("Phạm Ngọc Ánh", "pnanh"),
    ("Hoàng Đức Ưng", "hdung"),
    ("Vũ Thị Ngọc Trâm", "vtntram"),
    ("Bùi Xuân Phái", "bxphai"),
    ("Đặng Thùy Trâm", "dttram"),
    ("Lương Thế Vinh", "ltvinh"),
    ("Ngô Bảo Châu", "nbchau"),
    ("Huỳnh Tấn Phát", "htphat"),
    ("Dương Văn Minh", "dvminh"),
    ("Tôn Nữ Thị Ninh", "tntninh"),
    ("Võ Nguyên Giáp", "vngiap"),
    ("Hồ Xuân Hương", "hxhuong"),
    ("Nguyễn Văn Thắng", "nvthang"),
    ("Lê Thị Thu Hằng", "ltthang"),
    ("Hà Văn Khẳng", "hvkhang"),
    ("Đinh Thị Ẵm", "dtam"),
    ("Nguyễn Thị Cẩm Tú", "ntctu"),
    ("Phùng Chí Mẫn", "pcman"),
    ("Nguyễn Văn Lập", "nvlap"),
    ("Nguyễn Thị Thu Hiền", "ntthien"),
    ("Nguyễn Đình Chiểu", "ndchieu"),
    ("Võ Văn Kiệt", "vvkiet"),
    ("Khổng Tú Quỳnh", "ktquynh"),
    ("Phan Bội Châu", "pbchau"),
    ("Nguyễn Hữu Phước", "nhphuoc"),
    ("Lê Mạnh Cường", "lmcuong"),
    ("Hoàng Thị Hưởng", "hthuong"),
    ("Bùi Văn Lưỡng", "bvluong"),
    ("Nguyễn Thị Phượng", "ntphuong"),
    ("Đào Duy Từ", "ddtu"),
    ("Phan Văn Sửu", "pvsuu"),
    ("Nguyễn Văn Lực", "nvluc"),
    ("Ông Ích Khiêm", "oikhiem"),
    ("Âu Dương Lân", "adlan"),
    ("Đoàn Thị Điểm", "dtdiem"),
    ("Lê Lợi", "lloi"),
    ("Hùng", "hung"),
]

TONES = {"\u0301": "sắc", "\u0300": "huyền", "\u0309": "hỏi", "\u0303": "ngã", "\u0323": "nặng"}
VOWEL_MARKS = {("a", "\u0306"): "ă", ("a", "\u0302"): "â", ("e", "\u0302"): "ê"}
VOWEL_MARKS |= {("o", "\u0302"): "ô", ("o", "\u031b"): "ơ", ("u", "\u031b"): "ư"}


def _tone_cover(text: str) -> set[tuple[str, str]]:
    """(marked vowel, tone) pairs in text, read from its NFD form."""
    found = set()
    for ch in unicodedata.normalize("NFC", text.lower()):
        base, *marks = unicodedata.normalize("NFD", ch)
        vowel = next((VOWEL_MARKS[base, m] for m in marks if (base, m) in VOWEL_MARKS), None)
        tone = next((TONES[m] for m in marks if m in TONES), None)
        if vowel and tone:
            found.add((vowel, tone))
    return found


def test_table_covers_every_tone_on_every_marked_vowel() -> None:
    covered = set().union(*(_tone_cover(name) for name, _ in NAMES))
    wanted = set(itertools.product(VOWEL_MARKS.values(), TONES.values()))
    assert wanted - covered == set()
    assert any("Đ" in name for name, _ in NAMES)


@pytest.mark.parametrize(("name", "local"), NAMES)
def test_personal_address_is_initials_plus_given_name(name: str, local: str) -> None:
    assert base_local_part(name) == local


@pytest.mark.parametrize(("name", "local"), NAMES)
def test_nfd_input_gives_the_same_address(name: str, local: str) -> None:
    nfd = unicodedata.normalize("NFD", name)
    assert nfd != name or name.isascii()
    assert base_local_part(nfd) == local


@pytest.mark.parametrize(("name", "local"), NAMES)
def test_spacing_and_case_do_not_matter(name: str, local: str) -> None:
    spaced = "  " + "\t \u00a0".join(name.split()) + " \n"
    assert base_local_part(spaced) == local
    assert base_local_part(name.upper()) == local
    assert base_local_part(name.lower()) == local


def test_old_and_new_tone_placement_agree() -> None:
    assert base_local_part("Đặng Thuỳ Trâm") == base_local_part("Đặng Thùy Trâm") == "dttram"


def test_fold_strips_every_mark_and_d_stroke() -> None:
    text = "ă ắ ằ ẳ ẵ ặ â ấ ầ ẩ ẫ ậ ê ế ề ể ễ ệ ô ố ồ ổ ỗ ộ ơ ớ ờ ở ỡ ợ ư ứ ừ ử ữ ự đ Đ"
    expected = " ".join(["a"] * 12 + ["e"] * 6 + ["o"] * 12 + ["u"] * 6 + ["d", "D"])
    assert fold_vietnamese(text) == expected
    assert fold_vietnamese(unicodedata.normalize("NFD", text)) == fold_vietnamese(text)
    assert fold_vietnamese("Á À Ả Ã Ạ Ý Ỳ Ỷ Ỹ Ỵ") == "A A A A A Y Y Y Y Y"


def test_fold_other_scripts() -> None:
    assert fold_vietnamese("Müller Ñuñez Ðặng") == "Muller Nunez Dang"
    assert fold_vietnamese("ß王ø") == ""
    assert fold_vietnamese("a\u00a0b") == "a b"


def test_name_parts_normalises_whitespace_and_form() -> None:
    assert name_parts("  Nguyễn\t Thị \n Minh  Khai ") == ["Nguyễn", "Thị", "Minh", "Khai"]
    assert name_parts(unicodedata.normalize("NFD", "Đỗ Văn Bê")) == ["Đỗ", "Văn", "Bê"]


def test_one_word_name_is_that_word() -> None:
    assert base_local_part("Hùng") == "hung"
    assert list(itertools.islice(candidates("Hùng"), 3)) == ["hung", "hung2", "hung3"]


def test_punctuation_inside_and_between_words_is_dropped() -> None:
    assert base_local_part("Ksor H'Luông") == "khluong"
    assert base_local_part("Nguyễn - Văn A") == "nva"


def test_long_given_name_is_cut_to_64() -> None:
    local = base_local_part("Nguyễn Văn " + "Đ" * 100)
    assert local == "nv" + "d" * 62
    assert len(local) == MAX_LOCAL_PART
    assert all(len(c) <= MAX_LOCAL_PART for c in itertools.islice(candidates(local, "X" * 80), 50))


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("   \t", "empty"),
        ("12345", "no letters"),
        ("123 456", "no letters"),
        ("- . -", "no letters"),
        ("王小明", "transliteration"),
        ("Nguyễn 王", "transliteration"),
    ],
)
def test_bad_names_raise_with_a_reason(name: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        base_local_part(name)
    with pytest.raises(ValueError, match=reason):
        candidates(name)  # eagerly, not at the first next()


@pytest.mark.parametrize(
    ("text", "symbol"),
    [
        ("PTTH&TTĐT", "ptth_ttdt"),  # MIC 5.1's own example
        ("CNTT", "cntt"),
        ("Vụ Pháp chế", "vu_phap_che"),
        ("KH-TC", "kh_tc"),
        ("VP.ĐU", "vp_du"),
        ("  Cục  Bưu điện Trung ương ", "cuc_buu_dien_trung_uong"),
        ("__TCCB__", "tccb"),
        ("Vụ Hợp tác Quốc tế (HTQT)", "vu_hop_tac_quoc_te_htqt"),
        ("BCĐ 389", "bcd_389"),
    ],
)
def test_unit_symbol(text: str, symbol: str) -> None:
    assert unit_symbol(text) == symbol
    assert unit_symbol(unicodedata.normalize("NFD", text)) == symbol


@pytest.mark.parametrize("text", ["", "   ", "&&", "__", "王"])
def test_unit_symbol_with_nothing_left_raises(text: str) -> None:
    with pytest.raises(ValueError, match="unit symbol"):
        unit_symbol(text)


def test_long_unit_symbol_is_cut_to_64() -> None:
    assert unit_symbol("A" * 63 + "&B") == "a" * 63


def test_candidate_order_for_mic_example() -> None:
    got = list(itertools.islice(candidates("Đỗ Văn Bê", "CNTT"), 9))
    assert got == [
        "dvbe",  # MIC 5.3 plain form
        "vdbe",  # given name last, initials swapped
        "bedv",  # given name first
        "bevd",
        "dbev",  # given name inside
        "vbed",
        "dvbe.cntt",  # MIC 5.4 hovaten.tendonvi
        "dvbe2",
        "dvbe3",
    ]


def test_candidates_skip_repeats() -> None:
    got = list(itertools.islice(candidates("Nguyễn Ngọc Ngạn"), 4))
    assert got == ["nnngan", "ngannn", "nngann", "nnngan2"]


def test_candidates_are_distinct_dot_atoms_and_never_run_dry() -> None:
    got = list(itertools.islice(candidates("Nguyễn Thị Minh Khai", "PTTH&TTĐT"), 2000))
    assert len(set(got)) == len(got) == 2000
    assert got[24] == "ntmkhai.ptth_ttdt"  # after the 4! orders
    assert got[-1] == "ntmkhai1976"  # 25 forms before, numbering from 2
    for local in got:
        atoms = local.split(".")
        assert all(atoms) and len(local) <= MAX_LOCAL_PART
        assert set("".join(atoms)) <= set("abcdefghijklmnopqrstuvwxyz0123456789_")


def test_many_word_name_still_reaches_unit_form() -> None:
    gen = candidates("A B C D E F G H I J K L", "CNTT")
    assert "abcdefghijkl.cntt" in itertools.islice(gen, 721)


def test_suggest_plain_form_when_free() -> None:
    assert suggest("Đỗ Văn Bê", "mic.gov.vn", lambda addr: False) == "dvbe"


def test_suggest_first_permutation_on_collision() -> None:
    asked: list[str] = []

    def taken(addr: str) -> bool:
        asked.append(addr)
        return addr == "dvbe@x.gov.vn"

    assert suggest("Đỗ Văn Bê", "X.GOV.VN", taken) == "vdbe"
    assert asked == ["dvbe@x.gov.vn", "vdbe@x.gov.vn"]


ALL_ORDERS = {f"{x}@mic.gov.vn" for x in ["dvbe", "vdbe", "bedv", "bevd", "dbev", "vbed"]}


def test_suggest_unit_form_when_all_orders_taken() -> None:
    assert suggest("Đỗ Văn Bê", "mic.gov.vn", ALL_ORDERS.__contains__, unit="CNTT") == "dvbe.cntt"


def test_suggest_numbered_form_without_unit() -> None:
    assert suggest("Đỗ Văn Bê", "mic.gov.vn", ALL_ORDERS.__contains__) == "dvbe2"
    taken = ALL_ORDERS | {"dvbe.cntt@mic.gov.vn", "dvbe2@mic.gov.vn"}
    assert suggest("Đỗ Văn Bê", "mic.gov.vn", taken.__contains__, unit="CNTT") == "dvbe3"


def test_suggest_skips_revoked_but_reserved() -> None:
    in_use = {"ntmkhai@mic.gov.vn"}
    reserved = {"nmtkhai@mic.gov.vn"}  # revoked, still held back from reuse
    got = suggest("Nguyễn Thị Minh Khai", "mic.gov.vn", (in_use | reserved).__contains__)
    assert got == "tnmkhai"  # third order of the initials (n, t, m)


def test_suggest_rejects_bad_domain() -> None:
    with pytest.raises(ValueError, match="domain"):
        suggest("Đỗ Văn Bê", " ", lambda addr: False)
    with pytest.raises(ValueError, match="domain"):
        suggest("Đỗ Văn Bê", "a@b", lambda addr: False)
