"""``glad-edge bundle keygen|sign|verify|rollback`` and ``glad-edge publish-update`` (docs/updates.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge_runtime.errors import GladEdgeError, UsageError


def add_parsers(sub: argparse._SubParsersAction, parser_class: type[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bundle", help="sign and verify bundles, roll a station back",
                       description="Ed25519 signing of bundles (docs/updates.md).")
    bsub = p.add_subparsers(dest="bundle_command", required=True, parser_class=parser_class)
    k = bsub.add_parser("keygen", help="write signing.key (mode 0600) and signing.pub")
    k.add_argument("--out", required=True, type=Path, help="directory for signing.key and signing.pub")
    k.add_argument("--overwrite", action="store_true", help="replace an existing key pair")
    s = bsub.add_parser("sign", help="set the manifest version and write manifest.sig",
                        description="Set the manifest's integer version, add a golden self-test when the bundle "
                        "has none, rewrite manifest.json and write manifest.sig (Ed25519 over its exact bytes).")
    s.add_argument("bundle", type=Path)
    s.add_argument("--key", required=True, type=Path, help="signing.key")
    s.add_argument("--version", required=True, type=int, help="integer bundle version (stations only take higher)")
    s.add_argument("--no-selftest", action="store_true", help="do not add a golden self-test")
    s.add_argument("--selftest-atol", type=float, help="self-test tolerance: absolute part (default 1e-3)")
    s.add_argument("--selftest-rtol", type=float,
                   help="self-test tolerance: relative part (default 1e-2; widen it for fp16 / TensorRT stations, "
                   "whose scores differ from the ONNX Runtime fp32 golden ones)")
    v = bsub.add_parser("verify", help="exit 0 only when the signature and every file's sha256 hold")
    v.add_argument("bundle", type=Path)
    v.add_argument("--pubkey", required=True, type=Path, action="append", help="signing.pub (repeatable)")
    r = bsub.add_parser("rollback", help="switch a station back to its previous bundle",
                        description="Over MQTT (--station, --broker): the running station loads its previous "
                        "bundle, self-tests it and switches. With --config: rewrite the pointer of a STOPPED "
                        "station so that its next start runs the previous bundle.")
    r.add_argument("--station", help="station id")
    r.add_argument("--broker", help="HOST:PORT")
    r.add_argument("--prefix", default="glad-edge", help="topic prefix (default glad-edge)")
    r.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the station's answer")
    r.add_argument("--config", type=Path, help="station.yaml of a stopped station")

    u = sub.add_parser("publish-update", help="push a signed bundle to stations over MQTT",
                       description="Offer a signed bundle to one station (--station) or roll it out to several "
                       "(--stations a,b,c: the first is the canary, the rest follow in waves once it reports "
                       "applied; the roll-out halts at the first failure). Serves the chunks the stations request.")
    u.add_argument("bundle", type=Path)
    g = u.add_mutually_exclusive_group(required=True)
    g.add_argument("--station", help="station id")
    g.add_argument("--stations", help="comma-separated station ids, or @FILE (a group: one id per line, # comments); "
                   "the first is the canary")
    u.add_argument("--broker", required=True, help="HOST:PORT")
    u.add_argument("--prefix", default="glad-edge", help="topic prefix (default glad-edge)")
    u.add_argument("--wait", type=float, help="seconds to wait for the final state; exit 0 only when applied")
    u.add_argument("--wave-size", type=int, default=0, help="stations per wave after the canary (0: all at once)")
    u.add_argument("--chunk-kb", type=int, default=256, help="chunk size in KiB (default 256)")
    u.add_argument("--username", help="MQTT user name")
    u.add_argument("--password-env", default="GLAD_EDGE_MQTT_PASSWORD",
                   help="environment variable holding the MQTT password")
    u.add_argument("--client-id", help="MQTT client id (default: glad-edge-publisher-<random>)")


def _broker(text: str | None) -> tuple[str, int]:
    host, sep, port = (text or "").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--broker {text!r}: expected HOST:PORT")
    return host, int(port)


def cmd_bundle(args: argparse.Namespace) -> int:
    from edge_runtime.updates import signing

    if args.bundle_command == "keygen":
        priv, pub = signing.keygen(args.out, overwrite=args.overwrite)
        print(f"wrote {priv} (private, mode 0600) and {pub} (key id {signing.load_public_key(pub).key_id})")
        return 0
    if args.bundle_command == "sign":
        kid = signing.sign_bundle(args.bundle, args.key, args.version, selftest=not args.no_selftest,
                                  atol=args.selftest_atol, rtol=args.selftest_rtol)
        print(f"signed {args.bundle} version {args.version} with key {kid}")
        return 0
    if args.bundle_command == "verify":
        kid = signing.verify_bundle(args.bundle, signing.load_trusted_keys(args.pubkey))
        print(f"{args.bundle}: signature by key {kid} and every file's sha256 hold")
        return 0
    return _rollback(args)


def _rollback(args: argparse.Namespace) -> int:
    if args.config is not None:
        if args.station or args.broker:
            raise UsageError("--config (offline) excludes --station/--broker (over MQTT)")
        from edge_runtime.service.config import load_config
        from edge_runtime.updates.store import BundleStore

        cfg = load_config(args.config)
        store = BundleStore(cfg.storage.state_dir)
        cur, prev = store.read_pointer()
        if prev is None:
            raise GladEdgeError(f"{store.pointer}: no previous bundle to roll back to")
        store.write_pointer(prev, None)
        print(f"{cfg.station}: the next start runs {prev} (was {cur})")
        return 0
    if not args.station:
        raise UsageError("give --station and --broker (running station) or --config (stopped station)")
    from edge_runtime.updates.publisher import send_rollback

    status = send_rollback(*_broker(args.broker), args.prefix, args.station, args.wait)
    print(json.dumps(status))
    return 0 if status.get("state") == "rolled-back" else 1


def _stations(spec: str) -> list[str]:
    if not spec.startswith("@"):
        return [s.strip() for s in spec.split(",") if s.strip()]
    path = Path(spec[1:])
    try:
        if path.stat().st_size > 1 << 20:
            raise GladEdgeError(f"--stations {spec}: group file larger than 1 MiB")
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise GladEdgeError(f"--stations {spec}: cannot read the group file ({e})") from None
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def cmd_publish(args: argparse.Namespace) -> int:
    import os

    from edge_runtime.updates.publisher import Publisher

    stations = [args.station] if args.station else _stations(args.stations)
    if not stations or len(set(stations)) != len(stations):
        raise UsageError("--stations: give distinct station ids, comma-separated")
    if not 1 <= args.chunk_kb <= 1024:
        raise UsageError("--chunk-kb must be 1..1024")
    if args.wave_size < 0:
        raise UsageError("--wave-size must be >= 0")
    host, port = _broker(args.broker)
    pub = Publisher(args.bundle, host, port, prefix=args.prefix, chunk_size=args.chunk_kb * 1024,
                    username=args.username, password=os.environ.get(args.password_env), client_id=args.client_id)
    with pub:
        if len(stations) == 1 and args.station:
            status = pub.update(stations[0], wait=args.wait)
            print(json.dumps(status))
            if args.wait is None:
                return 0 if status.get("state") not in ("rejected", "timeout") else 1
            return 0 if status.get("state") == "applied" else 1
        report = pub.roll_out(stations, wave_size=args.wave_size, wait=args.wait or 600.0)
        print(json.dumps(report))
        return 0 if report["outcome"] == "applied" else 1
