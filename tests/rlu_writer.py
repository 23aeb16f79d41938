"""Test fixture writer: RL Unplugged Atari episode shards, written independently of jowa's reader.

``tf.train.Example`` messages are built with the ``protobuf`` library from a descriptor declared here (the
reader hand-parses the wire format), PNGs are encoded with Pillow (the reader decodes with OpenCV), the
TFRecord CRCs use a pure-Python CRC32C table (the reader uses google-crc32c) and gzip is Python's.
Deliberately imports nothing from ``jowa_core``.
"""

from __future__ import annotations

import gzip
import io
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from PIL import Image

# ------------------------------------------------------------------------------------------ tf.train.Example


def _example_classes():
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="jowa_test_example.proto", package="jowatest", syntax="proto3")

    def msg(name: str, fields: list[tuple[str, int, int, int, str]], oneof: str | None = None):
        m = fdp.message_type.add(name=name)
        if oneof:
            m.oneof_decl.add(name=oneof)
        for fname, num, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=num, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
            if oneof:
                f.oneof_index = 0
        return m

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    msg("BytesList", [("value", 1, F.TYPE_BYTES, rep, "")])
    msg("FloatList", [("value", 1, F.TYPE_FLOAT, rep, "")])
    msg("Int64List", [("value", 1, F.TYPE_INT64, rep, "")])
    msg(
        "Feature",
        [
            ("bytes_list", 1, F.TYPE_MESSAGE, opt, ".jowatest.BytesList"),
            ("float_list", 2, F.TYPE_MESSAGE, opt, ".jowatest.FloatList"),
            ("int64_list", 3, F.TYPE_MESSAGE, opt, ".jowatest.Int64List"),
        ],
        oneof="kind",
    )
    features = msg("Features", [("feature", 1, F.TYPE_MESSAGE, rep, ".jowatest.Features.FeatureEntry")])
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt, type_name=".jowatest.Feature")
    msg("Example", [("features", 1, F.TYPE_MESSAGE, opt, ".jowatest.Features")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("jowatest.Example"))


Example = _example_classes()


def png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class RluEpisode:
    """One episode as RL Unplugged stores it: N observations (with the terminal one when terminal)."""

    frames: np.ndarray  # (N, 84, 84) uint8
    actions: list[int]
    clipped_rewards: list[float]
    discounts: list[float]
    unclipped_rewards: list[float] | None = None
    checkpoint: int = 0
    index: int = 0
    pngs: list[bytes] | None = None  # override the encoded frames
    drop: tuple[str, ...] = ()  # features to leave out
    extra: dict = field(default_factory=dict)

    def example(self) -> bytes:
        ex = Example()
        feat = ex.features.feature
        unclipped = self.unclipped_rewards if self.unclipped_rewards is not None else self.clipped_rewards
        values = {
            "checkpoint_idx": ("int64", [self.checkpoint]),
            "episode_idx": ("int64", [self.index]),
            "episode_return": ("float", [float(sum(unclipped))]),
            "clipped_episode_return": ("float", [float(sum(self.clipped_rewards))]),
            "observations": ("bytes", self.pngs if self.pngs is not None else [png(f) for f in self.frames]),
            "actions": ("int64", [int(a) for a in self.actions]),
            "unclipped_rewards": ("float", [float(r) for r in unclipped]),
            "clipped_rewards": ("float", [float(r) for r in self.clipped_rewards]),
            "discounts": ("float", [float(d) for d in self.discounts]),
            **self.extra,
        }
        for name, (kind, vals) in values.items():
            if name in self.drop:
                continue
            getattr(feat[name], f"{kind}_list").value.extend(vals)
        return ex.SerializeToString()


def terminal_episode(frames, actions, rewards, terminal_frame: np.ndarray, **kw) -> RluEpisode:
    """Stored steps (frames, actions, rewards after them) of an episode that ended: the terminal observation
    is appended with a dummy action and reward, and discount 0 on it (1 before)."""
    n = len(actions)
    return RluEpisode(
        frames=np.concatenate([np.asarray(frames), terminal_frame[None]]),
        actions=[*actions, 0],
        clipped_rewards=[*rewards, 0.0],
        discounts=[1.0] * n + [0.0],
        **kw,
    )


def cut_episode(frames, actions, rewards, **kw) -> RluEpisode:
    """An episode cut before its end: every step is a real step, no discount is 0."""
    return RluEpisode(np.asarray(frames), list(actions), list(rewards), [1.0] * len(actions), **kw)


# ------------------------------------------------------------------------------------------ TFRecord framing


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked(crc32c(length))) + data + struct.pack("<I", masked(crc32c(data)))


def write_shard(path: Path, episodes: list[RluEpisode], raw_hook=None) -> Path:
    """Write a GZIP TFRecord file of ``episodes``; ``raw_hook(bytes) -> bytes`` may corrupt the framed stream."""
    raw = b"".join(frame(ep.example()) for ep in episodes)
    if raw_hook is not None:
        raw = raw_hook(raw)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(raw)
    return path


def shard_name(run: int, shard: int, total: int) -> str:
    return f"run_{run}-{shard:05d}-of-{total:05d}"


# ------------------------------------------------------------------------------------------ from collected logs


def episodes_from_single_file_logs(log_dir: Path) -> tuple[list[tuple[np.ndarray, list, list]], tuple | None]:
    """Episodes of a collected run logged in one final file (capacity larger than the run).

    Returns ([(frames, actions, rewards)] of finished episodes, the unfinished tail or None); each episode is
    preceded by 3 zero padding rows (Dopamine, stack size 4).
    """
    def load(name: str) -> np.ndarray:
        with gzip.open(log_dir / f"{name}_ckpt.0.gz") as f:
            return np.load(f)

    count = int(load("add_count"))
    obs, act = load("$store$_observation")[:count], load("$store$_action")[:count]
    rew, term = load("$store$_reward")[:count], load("$store$_terminal")[:count]
    done, i = [], 0
    while i < count:
        i += 3  # padding
        j = i
        while j < count and not term[j]:
            j += 1
        if j == count:
            return done, (obs[i:j], act[i:j].tolist(), rew[i:j].tolist()) if j > i else None
        done.append((obs[i : j + 1], act[i : j + 1].tolist(), rew[i : j + 1].tolist()))
        i = j + 1
    return done, None
