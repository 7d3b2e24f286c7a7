"""MLLP framing (worklist.mllp.FrameBuffer), without a socket."""

import random

from worklist.mllp import FrameBuffer, frame

ORDER = b"MSH|^~\\&|RIS|HOSP|PACS||20240101120000||ORM^O01|MSG1|P|2.3\rPID|||123||DOE^JOHN\r"
ADT = b"MSH|^~\\&|RIS|HOSP|PACS||20240101120000||ADT^A08|MSG2|P|2.3\rPID|||123||DOE^JANE\r"


def test_it_returns_a_complete_frame():
    buffer = FrameBuffer(1024)
    assert buffer.feed(frame(ORDER)) == [ORDER]
    assert (buffer.frames, buffer.skipped_bytes, buffer.pending_bytes) == (1, 0, 0)


def test_a_frame_split_across_reads_comes_out_once_complete():
    buffer = FrameBuffer(1024)
    data = frame(ORDER)
    assert buffer.feed(data[:1]) == []
    assert buffer.feed(data[1:20]) == []
    assert buffer.pending_bytes == 19
    assert buffer.feed(data[20:-2]) == []
    assert buffer.feed(data[-2:-1]) == [ORDER]
    assert buffer.feed(data[-1:]) == []
    assert buffer.skipped_bytes == 0


def test_a_frame_fed_one_byte_at_a_time_comes_out_whole():
    buffer = FrameBuffer(1024)
    out = []
    for byte in frame(ORDER) + frame(ADT):
        out += buffer.feed(bytes([byte]))
    assert out == [ORDER, ADT]
    assert buffer.skipped_bytes == 0


def test_several_frames_in_one_chunk_come_out_in_order():
    buffer = FrameBuffer(1024)
    assert buffer.feed(frame(ORDER) + frame(ADT) + frame(ORDER)) == [ORDER, ADT, ORDER]
    assert buffer.frames == 3


def test_bytes_before_the_start_block_are_skipped_and_counted():
    buffer = FrameBuffer(1024)
    assert buffer.feed(b"GET / HTTP/1.0\r\n\r\n" + frame(ORDER)) == [ORDER]
    assert buffer.skipped_bytes == 18


def test_bytes_between_frames_are_skipped_and_counted():
    buffer = FrameBuffer(1024)
    assert buffer.feed(frame(ORDER) + b"\x00\x00junk" + frame(ADT)) == [ORDER, ADT]
    assert buffer.skipped_bytes == 6


def test_garbage_alone_yields_nothing_and_keeps_no_memory():
    buffer = FrameBuffer(1024)
    assert buffer.feed(b"\xff" * 100_000) == []
    assert buffer.skipped_bytes == 100_000
    assert buffer.pending_bytes == 0


def test_a_missing_carriage_return_after_the_end_block_is_tolerated():
    buffer = FrameBuffer(1024)
    assert buffer.feed(b"\x0b" + ORDER + b"\x1c" + b"\x0b" + ADT + b"\x1c") == [ORDER, ADT]
    assert buffer.skipped_bytes == 0


def test_a_carriage_return_split_from_its_end_block_is_not_counted_as_garbage():
    buffer = FrameBuffer(1024)
    assert buffer.feed(b"\x0b" + ORDER + b"\x1c") == [ORDER]
    assert buffer.feed(b"\r") == []
    assert buffer.skipped_bytes == 0


def test_an_oversize_frame_is_dropped_and_the_next_one_kept():
    buffer = FrameBuffer(1024)
    big = b"MSH|" + b"X" * 5000
    assert buffer.feed(frame(big) + frame(ORDER)) == [ORDER]
    assert buffer.oversize_frames == 1
    assert buffer.oversize_bytes == len(big)
    assert buffer.skipped_bytes == 0


def test_an_oversize_frame_is_dropped_without_being_held_in_memory():
    buffer = FrameBuffer(1024)
    assert buffer.feed(b"\x0b" + b"X" * 1025) == []
    assert buffer.oversize_frames == 1
    for _ in range(100):
        assert buffer.feed(b"X" * 10_000) == []
    assert buffer.pending_bytes == 0
    assert buffer.feed(b"\x1c\r" + frame(ORDER)) == [ORDER]
    assert buffer.oversize_frames == 1
    assert buffer.oversize_bytes == 1025 + 1_000_000


def test_a_frame_of_exactly_the_maximum_size_is_kept():
    message = b"M" * 1024
    assert FrameBuffer(1024).feed(frame(message)) == [message]
    assert FrameBuffer(1023).feed(frame(message)) == []


def test_an_oversize_frame_with_no_end_resynchronises_at_the_next_start_block():
    buffer = FrameBuffer(1024)
    assert buffer.feed(b"\x0b" + b"X" * 2000 + frame(ORDER)) == [ORDER]
    assert buffer.oversize_frames == 1


def test_a_frame_with_no_end_is_dropped_when_the_next_one_starts():
    buffer = FrameBuffer(1024)
    assert buffer.feed(b"\x0bMSH|^~\\&|cut off" + frame(ADT)) == [ADT]
    assert buffer.truncated_frames == 1


def test_a_stray_end_block_cuts_the_frame_and_the_rest_is_skipped():
    buffer = FrameBuffer(1024)
    assert buffer.feed(b"\x0bMSH|first\x1cpart two\x1c\r" + frame(ADT)) == [b"MSH|first", ADT]
    assert buffer.skipped_bytes == len(b"part two\x1c\r")


def test_an_empty_frame_is_returned_as_empty():
    assert FrameBuffer(1024).feed(b"\x0b\x1c\r") == [b""]


def test_nuls_and_non_ascii_bytes_inside_a_frame_are_kept_as_they_are():
    message = b"MSH|^~\\&|\x00\xe9\xff\x80|"
    assert FrameBuffer(1024).feed(frame(message)) == [message]


def test_every_valid_frame_survives_random_garbage_around_it():
    rng = random.Random(5)
    buffer = FrameBuffer(4096)
    stream = bytearray()
    for _ in range(300):
        stream += bytes(rng.choice(b"ab\x00\xff\r\n\x1c") for _ in range(rng.randrange(50)))
        stream += frame(ORDER)
    out = []
    i = 0
    while i < len(stream):
        step = rng.randrange(1, 200)
        out += buffer.feed(bytes(stream[i : i + step]))
        i += step
    assert out.count(ORDER) == 300
