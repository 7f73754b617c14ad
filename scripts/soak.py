#!/usr/bin/env python
"""Soak test of the line-side service: N parts through ``glad-edge run``, completeness, throughput, memory.

    python scripts/soak.py BUNDLE [--frames 10000] [--images DIR] [--threshold T] [--no-mqtt]
                                  [--sampler fast --steps K] [--json-out out/soak.json]

What runs: the real service, as a child process (``python -m edge_runtime.cli run --config ...``), so the
measured memory is the station's alone and the entry point is the production one. Its camera is a folder
source (``stop_at_end: true``, ``overload: wait``) holding exactly ``--frames`` files, ``f0000000.png``, ...:
hard links cycling over a small set of distinct images (those under ``--images``, searched recursively, or
20 synthetic parts at the bundle's resolution). So the frames are real image files decoded by the service,
the count is exact, and the run ends on its own after the last verdict (drain, outbox flush, clean exit).

Unless ``--no-mqtt``, the script starts its own Mosquitto on a free 127.0.0.1 port and subscribes to the
station's verdicts with a persistent-session QoS 1 client. Reject/error images go to a quota-capped
``rejects_dir`` (``--no-rejects`` to switch off), metrics listen on a free port: a full station.

Measured:

- completeness: every captured part got exactly one verdict: the service's own count of captured parts
  (its "station stopped" log line), the verdict log lines, and their seqs (distinct, one range, no gap)
  all equal ``--frames``; with MQTT, the consumer received every one of those seqs;
- verdicts/s: over the whole run and after warm-up (log-line arrival times);
- memory: VmRSS / VmHWM (and threads, open fds, CPU time) of the service from ``/proc/<pid>/status``,
  sampled every ``--sample-s`` seconds; RSS at warm-up end (the first sample after ``--warmup-frames``
  verdicts; default 10 % of the frames, at least 200) vs the last sample before the source ran out (the
  drain and shutdown that follow free memory, so they are left out), growth per 1,000 frames from
  those two points and from a least-squares fit over every sample after warm-up.

Writes one JSON report (``--json-out``) and prints a summary; exits 1 when completeness fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
STATION = "soak"


# -- frames ------------------------------------------------------------------------------------------


def synthetic_parts(resolution: int, n: int = 20, seed: int = 0) -> list[np.ndarray]:
    """Smooth parts with shifted gradients, a few with a dark blob or noise: HxWx3 uint8 RGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:resolution, 0:resolution].astype(np.float32)
    out = []
    for i in range(n):
        img = np.stack([xx * 2 + rng.uniform(0, 40), yy * 2 + rng.uniform(0, 40), (xx + yy) + 60], axis=-1)
        if i % 5 == 3:  # a defect
            cy, cx = rng.uniform(0.2, 0.8, 2) * resolution
            r = resolution / 8
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 15
        if i % 5 == 4:
            img += rng.normal(0, 25, img.shape)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def build_folder(work: Path, frames: int, images: Path | None, resolution: int, max_images: int) -> dict[str, Any]:
    """``work/parts`` with ``frames`` hard links over the distinct images copied/written to ``work/src``."""
    src = work / "src"
    src.mkdir()
    if images is not None:
        files = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_EXT and p.is_file()
                       and not ({"ground_truth", "train"} & set(p.relative_to(images).parts))  # MVTec layout:
                       and "mask" not in p.stem.lower())  # test parts only, no masks
        if not files:
            raise SystemExit(f"soak: no images under {images}")
        step = max(1, len(files) // max_images)
        distinct = []
        for i, p in enumerate(files[::step][:max_images]):
            dst = src / f"s{i:04d}{p.suffix.lower()}"
            shutil.copyfile(p, dst)
            distinct.append(dst)
        origin = str(images)
    else:
        distinct = []
        for i, img in enumerate(synthetic_parts(resolution)):
            dst = src / f"s{i:04d}.png"
            cv2.imwrite(str(dst), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            distinct.append(dst)
        origin = f"synthetic ({len(distinct)} parts, {resolution} px)"
    parts = work / "parts"
    parts.mkdir()
    for i in range(frames):
        s = distinct[i % len(distinct)]
        dst = parts / f"f{i:07d}{s.suffix}"
        try:
            os.link(s, dst)
        except OSError:
            shutil.copyfile(s, dst)
    return {"images": origin, "distinct_images": len(distinct)}


# -- mosquitto + consumer ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)


class Mosquitto:
    def __init__(self, root: Path) -> None:
        exe = find_mosquitto()
        if exe is None:
            raise SystemExit("soak: mosquitto not found (scripts/setup.sh installs it), or use --no-mqtt")
        import pwd

        self.port = free_port()
        root.mkdir()
        conf = root / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        f"log_dest file {root / 'mosquitto.log'}\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n")
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"soak: mosquitto exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"soak: mosquitto did not listen on {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Consumer:
    """Persistent-session QoS 1 subscriber of the station's verdicts: records each message's seq."""

    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.seqs: list[int] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="soak-consumer", protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect_async("127.0.0.1", port, 30, clean_start=False, properties=props)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise SystemExit("soak: the consumer got no SUBACK")

    def _on_message(self, client: Any, userdata: object, msg: Any) -> None:
        seq = json.loads(msg.payload)["seq"]
        with self._lock:
            self.seqs.append(seq)

    def snapshot(self) -> list[int]:
        with self._lock:
            return list(self.seqs)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- the service process ---------------------------------------------------------------------------------


class Station:
    """The service as a child; a thread reads its JSON log (stderr): verdict seqs, arrival times, the end."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_runtime.cli", "run", "--config", str(config)],
                                     cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.started = time.monotonic()
        self.seqs: list[int] = []
        self.times: list[float] = []  # monotonic arrival of each verdict line
        self.verdicts: dict[str, int] = {}
        self.error_kinds: dict[str, int] = {}
        self.stopped: dict[str, Any] | None = None
        self.ready_at: float | None = None
        self.exhausted_at: float | None = None  # the source ran out: the station drains and stops from here
        self.problems: list[str] = []  # error/warning lines other than verdicts (first 20)
        self.other_lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def n(self) -> int:
        return len(self.seqs)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                d = json.loads(line)
            except ValueError:
                if len(self.other_lines) < 50:
                    self.other_lines.append(line.rstrip())
                continue
            event = d.get("event")
            if event == "verdict":
                self.times.append(time.monotonic())
                self.seqs.append(d["seq"] if d.get("seq") is not None else -1)
                self.verdicts[d["verdict"]] = self.verdicts.get(d["verdict"], 0) + 1
                if d["verdict"] == "error":
                    kind = d.get("error_kind", "?")
                    self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
            elif event == "started":
                self.ready_at = time.monotonic()
            elif d.get("msg") == "camera source exhausted":
                self.exhausted_at = time.monotonic()
            elif event == "stopped":
                self.stopped = d
            elif d.get("level") in ("warning", "error") and len(self.problems) < 20:
                self.problems.append(line.rstrip())

    def join(self) -> None:
        self._reader.join(10)


def proc_sample(pid: int) -> dict[str, int] | None:
    """VmRSS / VmHWM (kB), threads, open fds, CPU seconds (user+system) of a live process."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    out: dict[str, Any] = {"fds": fds}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
        elif key == "Threads":
            out["threads"] = int(value)
    fields = stat.rsplit(")", 1)[1].split()
    out["cpu_s"] = round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)
    return out if "VmRSS" in out else None


# -- report ----------------------------------------------------------------------------------------------


def slope_per_1000(samples: list[dict[str, Any]]) -> float | None:
    """Least-squares RSS growth, MB per 1,000 frames, over the given samples."""
    if len(samples) < 3:
        return None
    x = np.array([s["frames"] for s in samples], float)
    y = np.array([s["rss_mb"] for s in samples], float)
    if np.ptp(x) == 0:
        return None
    return float(np.polyfit(x, y, 1)[0] * 1000)


def analyse(args: argparse.Namespace, st: Station, samples: list[dict[str, Any]], consumer_seqs: list[int] | None,
            rc: int, setup: dict[str, Any], manifest: Any, threshold: float) -> dict[str, Any]:
    seqs = st.seqs
    distinct = sorted(set(seqs))
    captured = st.stopped.get("parts") if st.stopped else None
    contiguous = bool(distinct) and distinct[-1] - distinct[0] + 1 == len(distinct) and -1 not in distinct
    completeness: dict[str, Any] = {
        "frames": args.frames,
        "captured": captured,
        "verdicts": len(seqs),
        "distinct_seqs": len(distinct),
        "seq_first": distinct[0] if distinct else None,
        "seq_last": distinct[-1] if distinct else None,
        "seq_contiguous": contiguous,
        "duplicate_seqs": len(seqs) - len(distinct),
        "by_verdict": dict(st.verdicts),
        "error_kinds": dict(st.error_kinds),
        "exit_code": rc,
    }
    ok = (rc == 0 and captured == args.frames == len(seqs) == len(distinct) and contiguous)
    if consumer_seqs is not None:
        got = set(consumer_seqs)
        missing = sorted(set(distinct) - got)
        completeness["mqtt_received"] = len(consumer_seqs)
        completeness["mqtt_distinct"] = len(got & set(distinct))
        completeness["mqtt_missing"] = len(missing)
        completeness["mqtt_missing_first"] = missing[:20]
        completeness["mqtt_duplicates"] = len(consumer_seqs) - len(got)
        ok = ok and not missing
    completeness["complete"] = ok

    warm_n = args.warmup_frames if args.warmup_frames is not None else max(200, args.frames // 10)
    throughput: dict[str, Any] = {}
    if len(st.times) >= 2:
        span = st.times[-1] - st.times[0]
        throughput["verdicts_per_s"] = round((len(st.times) - 1) / span, 2) if span > 0 else None
        if len(st.times) > warm_n + 1:
            span_w = st.times[-1] - st.times[warm_n]
            throughput["verdicts_per_s_after_warmup"] = round((len(st.times) - 1 - warm_n) / span_w, 2)
        throughput["run_s"] = round(span, 1)
    if st.ready_at is not None:
        throughput["start_to_ready_s"] = round(st.ready_at - st.started, 2)
    cpu = [s["cpu_s"] for s in samples]
    if cpu and samples[-1]["frames"]:
        throughput["cpu_ms_per_frame"] = round(cpu[-1] / samples[-1]["frames"] * 1000, 1)

    memory: dict[str, Any] = {"samples": len(samples), "sample_s": args.sample_s, "warmup_frames": warm_n}
    samples = [s for s in samples if s["phase"] == "running"]  # not the drain / shutdown at the end
    warm = next((s for s in samples if s["frames"] >= warm_n), None)
    if samples:
        end = samples[-1]
        memory.update({"rss_first_mb": samples[0]["rss_mb"], "rss_end_mb": end["rss_mb"],
                       "rss_end_frames": end["frames"], "rss_max_sampled_mb": max(s["rss_mb"] for s in samples),
                       "vmhwm_end_mb": end["hwm_mb"], "threads_end": end["threads"], "fds_end": end["fds"],
                       "threads_max": max(s["threads"] for s in samples), "fds_max": max(s["fds"] for s in samples)})
    if warm is not None and samples and samples[-1]["frames"] > warm["frames"]:
        end = samples[-1]
        memory["rss_warmup_end_mb"] = warm["rss_mb"]
        memory["rss_warmup_end_frames"] = warm["frames"]
        memory["growth_mb"] = round(end["rss_mb"] - warm["rss_mb"], 2)
        memory["growth_mb_per_1000_frames"] = round(
            (end["rss_mb"] - warm["rss_mb"]) / (end["frames"] - warm["frames"]) * 1000, 3)
        fit = slope_per_1000([s for s in samples if s["frames"] >= warm["frames"]])
        memory["growth_mb_per_1000_frames_fit"] = round(fit, 3) if fit is not None else None

    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "bundle": str(args.bundle),
        "bundle_version": manifest.bundle_version,
        "resolution": manifest.glad.resolution,
        "sampler": args.sampler or manifest.sampler.name,
        "steps": args.steps,
        "threshold": threshold,
        "threads": args.threads,
        "mqtt": not args.no_mqtt,
        "rejects_dir": not args.no_rejects,
        **setup,
        "completeness": completeness,
        "throughput": throughput,
        "memory": memory,
        "warnings": st.problems,
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--frames", type=int, default=10_000, help="parts to inspect (default 10000)")
    ap.add_argument("--images", type=Path,
                    help="folder of part images to cycle (recursive; skips ground_truth/, train/, *mask*; "
                    "default: synthetic parts)")
    ap.add_argument("--max-images", type=int, default=200, help="distinct images taken from --images, at most")
    ap.add_argument("--threshold", type=float, help="fixed threshold (needed for an uncalibrated bundle)")
    ap.add_argument("--sampler", choices=["exact", "fast"], help="override the bundle's sampler")
    ap.add_argument("--steps", type=int, help="fast sampler steps")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    ap.add_argument("--no-mqtt", action="store_true", help="no broker: seq from the local outbox")
    ap.add_argument("--no-rejects", action="store_true", help="do not store reject/error images")
    ap.add_argument("--sample-s", type=float, default=2.0, help="memory sampling period (default 2 s)")
    ap.add_argument("--warmup-frames", type=int, help="frames before the warm-up RSS point (default 10%%, >= 200)")
    ap.add_argument("--json-out", type=Path, default=REPO / "out" / "soak.json")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (printed)")
    args = ap.parse_args(argv)

    from edge_runtime.bundle import read_manifest

    manifest = read_manifest(args.bundle)
    if manifest.threshold is None and args.threshold is None:
        raise SystemExit(f"soak: {args.bundle} has no calibrated threshold: pass --threshold")
    threshold = args.threshold if args.threshold is not None else manifest.threshold

    work = Path(tempfile.mkdtemp(prefix="glad-soak-"))
    broker: Mosquitto | None = None
    consumer: Consumer | None = None
    st: Station | None = None
    try:
        t0 = time.monotonic()
        setup = build_folder(work, args.frames, args.images, manifest.glad.resolution, args.max_images)
        print(f"soak: {args.frames} frames over {setup['images']} in {work / 'parts'} "
              f"({time.monotonic() - t0:.1f} s)", file=sys.stderr)
        detector: dict[str, Any] = {"threads": args.threads, "warmup": 1}
        if args.sampler:
            detector["sampler"] = args.sampler
        if args.steps:
            detector["steps"] = args.steps
        pipeline: dict[str, Any] = {"overload": "wait", "queue_size": 4}
        if args.threshold is not None:
            pipeline.update({"threshold": args.threshold, "allow_uncalibrated": manifest.threshold is None})
        cfg: dict[str, Any] = {
            "station": STATION,
            "bundle": str(Path(args.bundle).resolve()),
            "camera": {"name": "soak", "source": str(work / "parts"), "stop_at_end": True},
            "detector": detector,
            "pipeline": pipeline,
            "storage": {"state_dir": str(work / "state")},
            "metrics": {"port": 0},
            "logging": {"format": "json", "level": "info"},
            "mqtt": None,
        }
        if not args.no_rejects:
            cfg["storage"].update({"rejects_dir": str(work / "rejects"), "quota_mb": 20})
        if not args.no_mqtt:
            broker = Mosquitto(work / "broker")
            cfg["mqtt"] = {"host": "127.0.0.1", "port": broker.port,
                           "outbox_path": str(work / "state" / "outbox.sqlite3"),
                           "reconnect_min_s": 0.2, "reconnect_max_s": 2.0}
            consumer = Consumer(broker.port, f"glad-edge/{STATION}/verdict")
        config = work / "station.yaml"
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))

        st = Station(config)
        samples: list[dict[str, Any]] = []
        last_print = time.monotonic()
        while True:
            s = proc_sample(st.proc.pid)
            if s is None or st.proc.poll() is not None:
                break
            samples.append({"t": round(time.monotonic() - st.started, 1), "frames": st.n,
                            "phase": "running" if st.exhausted_at is None and st.stopped is None else "stopping",
                            "rss_mb": round(s["VmRSS"] / 1024, 2), "hwm_mb": round(s["VmHWM"] / 1024, 2),
                            "threads": s["threads"], "fds": s["fds"], "cpu_s": s["cpu_s"]})
            if time.monotonic() - last_print > 30:
                last_print = time.monotonic()
                print(f"soak: {st.n}/{args.frames} verdicts, RSS {samples[-1]['rss_mb']:.1f} MB, "
                      f"t={samples[-1]['t']:.0f} s", file=sys.stderr)
            try:
                st.proc.wait(args.sample_s)
                break
            except subprocess.TimeoutExpired:
                pass
        rc = st.proc.wait()
        st.join()
        consumer_seqs = None
        if consumer is not None:
            want = set(st.seqs)
            deadline = time.monotonic() + 30
            while not want <= set(consumer.snapshot()) and time.monotonic() < deadline:
                time.sleep(0.2)
            consumer_seqs = consumer.snapshot()
        report = analyse(args, st, samples, consumer_seqs, rc, setup, manifest, threshold)
        if rc != 0:
            report["log_tail"] = st.other_lines[-20:] + st.problems[-5:]
    finally:
        if st is not None and st.proc.poll() is None:
            st.proc.send_signal(signal.SIGTERM)
            try:
                st.proc.wait(30)
            except subprocess.TimeoutExpired:
                st.proc.kill()
        if consumer is not None:
            consumer.close()
        if broker is not None:
            broker.stop()
        if args.keep:
            print(f"soak: work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    c, t, m = report["completeness"], report["throughput"], report["memory"]
    print(json.dumps({"completeness": c, "throughput": t,
                      "memory": m}, indent=2))
    print(f"soak: {'COMPLETE' if c['complete'] else 'INCOMPLETE'}: {c['verdicts']} verdicts for {c['captured']} "
          f"captured parts, seq {c['seq_first']}..{c['seq_last']}; {t.get('verdicts_per_s')} verdicts/s; RSS "
          f"{m.get('rss_warmup_end_mb')} MB at warm-up end -> {m.get('rss_end_mb')} MB "
          f"({m.get('growth_mb_per_1000_frames')} MB / 1000 frames); report {args.json_out}", file=sys.stderr)
    return 0 if c["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
