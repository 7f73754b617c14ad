"""The station's MQTT link: verdicts (at-least-once, in order), retained status, trigger commands.

Topics (``<prefix>`` = ``MqttConfig.topic_prefix``; see docs/contracts.md, "MQTT"):

- ``<prefix>/<station>/verdict``: one JSON object per part, QoS >= 1, not retained.
- ``<prefix>/<station>/status``: retained JSON ``{"schema": 1, "station", "camera", "state", "ts", "model",
  "backend" (and "backend_fallback" when ``auto`` fell back), "heartbeat_s", "uptime_s", "outbox_pending",
  "last_seq", ...}``; published on every connect (birth,
  ``state`` is ``"online"`` unless :meth:`MqttLink.set_status` set another), every ``heartbeat_s``, and on
  each :meth:`MqttLink.set_status`. The Last Will is the retained ``{"state": "offline", ...}``; a clean
  :meth:`MqttLink.stop` publishes it itself.
- ``<prefix>/<station>/cmd/trigger``: JSON object (an empty payload reads as ``{}``) handed to
  ``on_trigger`` on a worker thread. Retained trigger messages are ignored; the subscription uses
  ``MqttConfig.trigger_qos`` (default 0, so the broker does not queue triggers while the station is away).
  A trigger is either handed to ``on_trigger`` or refused at the door and reported to ``on_refused(reason,
  detail)``: ``too_large``, ``invalid`` (not a JSON object, non-finite numbers; see
  :mod:`edge_runtime.service.triggers`), ``retained``, ``queue_full``, ``stopping`` (after
  :meth:`MqttLink.close_triggers`). None is dropped without being counted.

Delivery of verdicts (at-least-once, in seq order):

1. :meth:`MqttLink.publish_verdict` stores the message in the durable :class:`Outbox` first (which gives it
   its ``seq``) and only then wakes the sender. When it returns, the verdict survives a crash.
2. One sender thread publishes outbox rows in seq order with QoS 1, at most ``max_inflight`` unacknowledged
   at a time (capped by the broker's Receive Maximum). A row is deleted only when its PUBACK arrives.
3. A connection lost with messages in flight: paho keeps them in its session store and re-sends them (DUP)
   first thing after the next CONNACK; the sender publishes nothing new until all of those are
   acknowledged, so nothing newer overtakes them on the wire. After a restart (crash, ``kill -9``, power
   loss) the new process re-sends every row still in the outbox, oldest first.

So a consumer can receive a verdict more than once (the broker got it but its PUBACK was lost), but the
first copy of each ``seq`` arrives in increasing seq order with no gaps. Consumers dedupe by keeping only
messages whose ``seq`` is larger than the largest seen so far (per station). Caveats: a broker that rejects
a publish (PUBACK reason code >= 0x80, e.g. not authorised, quota exceeded) makes the sender back off and
retry that seq, and newer ones already sent may then arrive before it; and a broker or a subscriber
session that discards queued messages (broker limits, expired sessions) loses them beyond the station's
reach. A full outbox raises :class:`OutboxFull` from publish_verdict: turn it into an alarm.

All queues are bounded: the outbox (``outbox_max_rows``), the in-flight window, paho's message store
(``max_inflight`` plus room for status messages), the PUBACK event queue and the trigger queue (1024; when a
slow ``on_trigger`` lets it fill, further triggers are refused, reported to ``on_refused`` and counted in
``stats()``).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_runtime.service.config import LimitsConfig
from edge_runtime.service.logs import utc_now
from edge_runtime.service.mqtt_config import MqttConfig, check_station
from edge_runtime.service.outbox import Outbox, OutboxError, OutboxFull, encode_message
from edge_runtime.service.triggers import TriggerRefused, parse_trigger
from edge_runtime.service.verdict import VERDICTS, verdict_message

__all__ = ["MqttLink", "OutboxFull", "VERDICTS", "utc_now"]

log = logging.getLogger(__name__)

STATUS_SCHEMA = 1
TRIGGER_QUEUE_SIZE = 1024  # a burst of triggers waits here rather than being refused; 16 kB each at most
_RESERVED_STATUS_KEYS = frozenset({"schema", "station", "camera", "state", "ts", "backend", "backend_fallback"})
_STATUS_SLACK = 64  # paho message-store room kept for status messages on top of the verdict window


def make_client(cfg: MqttConfig, client_id: str, logger: str) -> mqtt.Client:
    """An MQTT v5 client with the config's credentials, TLS and reconnect backoff."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.enable_logger(logging.getLogger(logger))
    client.suppress_exceptions = True  # a failing callback is logged; it must not end the network thread
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.password)
    if cfg.tls is not None:
        client.tls_set(ca_certs=cfg.tls.ca_certs, certfile=cfg.tls.certfile, keyfile=cfg.tls.keyfile)
        if cfg.tls.insecure:
            client.tls_insecure_set(True)
    client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)  # type: ignore[arg-type]
    return client


class MqttLink:
    """Publishes verdicts and status of one station, receives its trigger commands (see the module docstring).

    ``outbox``: pass an open :class:`Outbox` to share one (the link then does not close it); by default the
    link opens ``config.outbox_path`` with ``config.outbox_max_rows`` at construction, so verdicts can be
    queued before :meth:`start`, and closes it in :meth:`stop`.

    ``on_storage_error``: called with the exception when deleting acknowledged rows fails (disk full,
    read-only, corrupt); those deletes are retried on later rounds, and the rows are at worst sent again.
    """

    def __init__(
        self,
        config: MqttConfig,
        station: str,
        *,
        camera: str = "cam0",
        on_trigger: Callable[[dict[str, Any]], None] | None = None,
        model: dict[str, Any] | None = None,
        outbox: Outbox | None = None,
        on_storage_error: Callable[[BaseException], bool] | None = None,
        limits: LimitsConfig | None = None,
        on_refused: Callable[[str, str], None] | None = None,
        backend: str | None = None,
        backend_fallback: str | None = None,
    ) -> None:
        self.config = config
        self.backend = backend  # the inference backend in use, and why ``auto`` fell back (None: it did not)
        self.backend_fallback = backend_fallback
        self._on_storage_error = on_storage_error
        self.station = check_station(station)
        self.camera = camera
        self.model = dict(model) if model is not None else None
        if self.model is not None:
            encode_message(self.model)  # fail here, not in the network thread, when it is not JSON
        self._on_trigger = on_trigger
        self._on_refused = on_refused
        self.limits = limits if limits is not None else LimitsConfig()
        self.topic_verdict = config.topic(station, "verdict")
        self.topic_status = config.topic(station, "status")
        self.topic_trigger = config.topic(station, "cmd", "trigger")

        self._owns_outbox = outbox is None
        if outbox is None and config.outbox_path is None:
            raise ValueError("MqttLink needs an outbox: pass one or set config.outbox_path")
        self.outbox = outbox if outbox is not None else Outbox(str(config.outbox_path),
                                                                max_rows=config.outbox_max_rows)

        self._state = "online"
        self._status_fields: dict[str, Any] = {}
        self._status_lock = threading.Lock()

        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._pub_lock = threading.Lock()  # sender's publish vs. on_pre_connect (see _sender_publish)
        self._conn_gen = 0  # +1 before every (re)connect attempt; guarded by _pub_lock
        self._receive_max: int | None = None
        # PUBACK events: at most one per message paho stores, and paho stores at most max_queued.
        self._max_queued = config.max_inflight + _STATUS_SLACK
        self._acks: queue.Queue[tuple[int, ReasonCode | None]] = queue.Queue(maxsize=2 * self._max_queued)
        self._resync = False
        self._triggers: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=TRIGGER_QUEUE_SIZE)
        self._triggers_lock = threading.Lock()  # closing vs. enqueueing: nothing is queued after the drain
        self._triggers_closed = False

        self._stats_lock = threading.Lock()
        self._stats: dict[str, int] = dict.fromkeys(
            (
                "verdicts",
                "published",
                "acked",
                "rejected",
                "connects",
                "disconnects",
                "status_published",
                "triggers",
                "triggers_dropped",
                "triggers_invalid",
                "triggers_too_large",
                "triggers_stopping",
                "sender_errors",
                "unrecorded",
                "ack_delete_errors",
            ),
            0,
        )
        self._inflight_n = 0
        self._started_at: float | None = None
        self._threads: list[threading.Thread] = []
        self._client = self._make_client()

    # -- setup -----------------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        client = make_client(cfg, cfg.client_id_for(self.station), f"{__name__}.paho")
        client.max_inflight_messages_set(cfg.max_inflight + 4)
        client.max_queued_messages_set(self._max_queued)
        will = {
            "schema": STATUS_SCHEMA,
            "station": self.station,
            "camera": self.camera,
            "state": "offline",
            "reason": "connection lost",
        }
        client.will_set(self.topic_status, encode_message(will), qos=cfg.qos, retain=True)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    # -- public API ------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (retrying with backoff until stop()) and start the sender."""
        if self._started_at is not None:
            raise RuntimeError("MqttLink already started")
        self._started_at = time.monotonic()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.config.session_expiry_s
        self._client.connect_async(
            self.config.host, self.config.port, self.config.keepalive, clean_start=False, properties=props
        )
        self._client.loop_start()
        self._threads = [threading.Thread(target=self._sender_main, name=f"mqtt-sender-{self.station}", daemon=True)]
        if self._on_trigger is not None:
            self._threads.append(
                threading.Thread(target=self._trigger_main, name=f"mqtt-trigger-{self.station}", daemon=True)
            )
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Publish the retained "offline" status, disconnect, stop the threads, close an owned outbox.

        Unacknowledged verdicts stay in the outbox and are sent by the next start().
        """
        if self._started_at is not None and not self._stopping.is_set():
            self.close_triggers(timeout)
            self._stopping.set()
            self._wake.set()
            for t in self._threads:
                t.join(timeout)
            if self._connected.is_set():
                with self._status_lock:
                    self._state = "offline"
                    self._status_fields = {"reason": "stopped"}
                info = self._publish_status()
                if info is not None:
                    try:
                        info.wait_for_publish(timeout=min(timeout, 2.0))
                    except (RuntimeError, ValueError):
                        pass
            self._client.disconnect()
            self._client.loop_stop()
            self._connected.clear()
        if self._owns_outbox and not self.outbox.closed:
            self.outbox.close()

    def close_triggers(self, timeout: float = 5.0) -> None:
        """Refuse further trigger commands (reason ``stopping``) and hand every queued one to ``on_trigger``
        before returning, so a stopping station knows the fate of each trigger it took."""
        with self._triggers_lock:
            self._triggers_closed = True
        for t in self._threads:
            if t.name.startswith("mqtt-trigger"):
                t.join(timeout)

    def publish_verdict(self, message: dict[str, Any]) -> int:
        """Store one verdict durably, return its ``seq``; the sender publishes it in the background.

        ``schema``, ``station``, ``camera``, ``ts`` (now) and ``model`` are filled in when absent. ``seq`` is
        assigned here and must not be in ``message``. Raises ValueError for a bad message and
        :class:`OutboxFull` when the outbox holds ``outbox_max_rows`` undelivered verdicts (nothing stored:
        raise an alarm).
        """
        seq = self.outbox.put(self._verdict_message(message))
        self._count("verdicts")
        self._wake.set()
        return seq

    def _verdict_message(self, message: dict[str, Any]) -> dict[str, Any]:
        """``message`` checked (no seq: the outbox assigns it) and completed with the link's defaults."""
        if not isinstance(message, dict):
            raise TypeError(f"verdict message must be a dict, got {type(message).__name__}")
        if message.get("verdict") not in VERDICTS:
            raise ValueError(f"verdict must be one of {sorted(VERDICTS)}, got {message.get('verdict')!r}")
        if "seq" in message:
            raise ValueError("seq is assigned by the outbox; leave it out of the message")
        if message.get("station", self.station) != self.station:
            raise ValueError(f"message is for station {message['station']!r}, this link is {self.station!r}")
        return verdict_message(message, station=self.station, camera=self.camera, model=self.model)

    def publish_unrecorded(self, message: dict[str, Any]) -> bool:
        """Publish an "error" verdict that the outbox could not store (disk full, read-only, corrupt), once,
        from memory, with no ``seq``: sent at QoS 1 when connected, not kept for a later reconnect or restart.
        False when not connected."""
        payload = encode_message(self._verdict_message(message))
        if not self._connected.is_set():
            return False
        info = self._client.publish(self.topic_verdict, payload, qos=self.config.verdict_qos)
        self._count("unrecorded")
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def set_status(self, state: str, **fields: Any) -> None:
        """Set the retained status (``state`` plus extra ``fields``, replacing earlier extras) and publish it now."""
        if not isinstance(state, str) or not state:
            raise ValueError("state must be a non-empty string")
        bad = _RESERVED_STATUS_KEYS & fields.keys()
        if bad:
            raise ValueError(f"status fields {sorted(bad)} are set by the link")
        encode_message(fields)  # fail here, not in the network thread, when a field is not JSON
        with self._status_lock:
            self._state = state
            self._status_fields = dict(fields)
        self._publish_status()

    def set_model(self, model: dict[str, Any] | None) -> None:
        """Model identity (``{"version", "sha256"}``) put into later verdicts and the status; republishes status."""
        if model is not None:
            encode_message(model)  # fail here when it is not JSON
        self.model = dict(model) if model is not None else None
        self._publish_status()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every stored verdict is acknowledged by the broker; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.outbox.count() > 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            out: dict[str, Any] = dict(self._stats)
        out["connected"] = self.connected
        out["inflight"] = self._inflight_n
        if not self.outbox.closed:
            out["outbox_pending"] = self.outbox.count()
            out["last_seq"] = self.outbox.last_seq()
            out["oldest_pending_age_s"] = self.outbox.oldest_age_s()
        return out

    def __enter__(self) -> MqttLink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- status ----------------------------------------------------------------------------------

    def _status_payload(self) -> bytes:
        with self._status_lock:
            state, fields = self._state, dict(self._status_fields)
        body: dict[str, Any] = {
            "schema": STATUS_SCHEMA,
            "station": self.station,
            "camera": self.camera,
            "state": state,
            "ts": utc_now(),
            "model": self.model,
            "backend": self.backend,
            "heartbeat_s": self.config.heartbeat_s,
            "uptime_s": round(time.monotonic() - (self._started_at or time.monotonic()), 1),
        }
        try:
            body["outbox_pending"] = self.outbox.count()
            body["last_seq"] = self.outbox.last_seq()
        except (OutboxError, sqlite3.Error):  # a corrupt outbox: the status still goes out, stalled
            pass
        if self.backend_fallback is not None:
            body["backend_fallback"] = self.backend_fallback
        body.update(fields)
        return encode_message(body)

    def _publish_status(self) -> mqtt.MQTTMessageInfo | None:
        """Publish the retained status when connected (a disconnected station gets its birth on connect)."""
        if not self._connected.is_set():
            return None
        info = self._client.publish(self.topic_status, self._status_payload(), qos=self.config.qos, retain=True)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._count("status_published")
        else:
            log.debug("status publish: %s", mqtt.error_string(info.rc))
        return info

    # -- paho callbacks (network thread) ---------------------------------------------------------

    def _on_pre_connect(self, client: mqtt.Client, userdata: object) -> None:
        # Every message the sender published before this point is in paho's store and will be re-sent
        # after the CONNACK; the sender must see the new generation before publishing anything newer.
        with self._pub_lock:
            self._conn_gen += 1

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker %s:%s refused the connection: %s", self.config.host, self.config.port, reason_code)
            return
        self._receive_max = getattr(properties, "ReceiveMaximum", None)
        self._connected.set()
        self._count("connects")
        log.info(
            "MQTT connected to %s:%s (session present: %s)", self.config.host, self.config.port, flags.session_present
        )
        try:
            if self._on_trigger is not None:
                opts = SubscribeOptions(qos=self.config.trigger_qos, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
                client.subscribe(self.topic_trigger, options=opts)
            self._publish_status()  # birth
        except Exception:
            log.exception("MQTT on_connect: subscribe/birth failed")
        finally:
            self._wake.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was:
            self._count("disconnects")
        if not self._stopping.is_set():
            log.warning("MQTT disconnected from %s:%s: %s", self.config.host, self.config.port, reason_code)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # Called with paho's message lock held: only hand the event over, never call into the outbox here.
        try:
            self._acks.put_nowait((mid, reason_code if reason_code.is_failure else None))
        except queue.Full:  # cannot happen with the sizes above; recover by re-sending from the outbox
            self._resync = True
        self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic != self.topic_trigger or self._on_trigger is None:
            return
        try:
            if msg.retain:
                raise TriggerRefused("retained", "a retained trigger command (would fire on every reconnect)")
            payload = parse_trigger(msg.payload, self.limits)
            with self._triggers_lock:
                if self._triggers_closed:
                    raise TriggerRefused("stopping", "the station is stopping")
                try:
                    self._triggers.put_nowait(payload)
                except queue.Full:
                    raise TriggerRefused("queue_full", f"trigger queue full ({TRIGGER_QUEUE_SIZE})") from None
            self._count("triggers")
        except TriggerRefused as e:
            self._refuse(e.reason, str(e))

    _STAT_OF_REASON = {"queue_full": "triggers_dropped", "too_large": "triggers_too_large",
                       "stopping": "triggers_stopping"}

    def _refuse(self, reason: str, detail: str) -> None:
        self._count(self._STAT_OF_REASON.get(reason, "triggers_invalid"))
        log.warning("trigger refused: %s", detail,
                    extra={"fields": {"event": "trigger_refused", "reason": reason}})
        if self._on_refused is not None:
            try:
                self._on_refused(reason, detail)
            except Exception:
                log.exception("on_refused failed")

    # -- worker threads --------------------------------------------------------------------------

    def _trigger_main(self) -> None:
        assert self._on_trigger is not None
        while True:  # ends once closed and drained (close_triggers), never with a queued trigger left
            try:
                payload = self._triggers.get(timeout=0.2)
            except queue.Empty:
                with self._triggers_lock:
                    if self._triggers_closed and self._triggers.empty():
                        return
                continue
            try:
                self._on_trigger(payload)
            except Exception:
                log.exception("on_trigger failed")

    def _window(self) -> int:
        window = self.config.max_inflight
        if self._receive_max:  # leave the broker's Receive Maximum some room for status messages
            window = min(window, max(1, self._receive_max - 2))
        return window

    def _sender_main(self) -> None:
        inflight: dict[int, int] = {}  # paho mid -> seq, published and not yet PUBACKed
        last_sent = 0  # highest seq handed to paho in this process (rows above it are still to send)
        seen_gen = -1
        draining = False  # after a reconnect: wait for paho's re-sends to be acknowledged first
        hold_until = 0.0  # after a rejected publish: back off
        hb = self.config.heartbeat_s
        next_hb = time.monotonic() + hb
        acked: list[int] = []  # PUBACKed seqs whose rows are not deleted yet (kept over a failed delete)
        while True:
            self._wake.wait(max(0.0, min(next_hb - time.monotonic(), 1.0)))
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                # 1. acknowledgements
                rewind: int | None = None
                while True:
                    try:
                        mid, failure = self._acks.get_nowait()
                    except queue.Empty:
                        break
                    seq = inflight.pop(mid, None)
                    if seq is None:
                        continue  # a status message
                    if failure is None:
                        acked.append(seq)
                    else:
                        self._count("rejected")
                        log.warning("broker rejected verdict seq %d (%s); retrying later", seq, failure)
                        rewind = seq if rewind is None else min(rewind, seq)
                if acked and self._delete_acked(acked):
                    self._count("acked", len(acked))
                    acked = []
                if self._resync:
                    self._resync = False
                    log.error("lost track of PUBACKs; re-sending everything in the outbox")
                    inflight.clear()
                    last_sent = 0
                if rewind is not None:
                    last_sent = min(last_sent, rewind - 1)
                    hold_until = time.monotonic() + self.config.reconnect_max_s
                self._inflight_n = len(inflight)

                # 2. new publishes
                if self._connected.is_set() and time.monotonic() >= hold_until:
                    with self._pub_lock:
                        gen = self._conn_gen
                    if gen != seen_gen:
                        seen_gen = gen
                        draining = bool(inflight)
                    if draining and not inflight:
                        draining = False
                    if not draining:
                        last_sent = self._send_batch(inflight, last_sent, seen_gen)
                    self._inflight_n = len(inflight)

                # 3. heartbeat
                now = time.monotonic()
                if now >= next_hb:
                    next_hb = now + hb
                    self._publish_status()
            except Exception:
                self._count("sender_errors")
                log.exception("MQTT sender error")
                self._stopping.wait(0.5)

    def _delete_acked(self, seqs: list[int]) -> bool:
        try:
            self.outbox.ack_many(seqs)
            return True
        except (OutboxError, sqlite3.Error) as e:
            self._count("ack_delete_errors")
            if self._on_storage_error is None or not self._on_storage_error(e):
                raise
            return False

    def _send_batch(self, inflight: dict[int, int], last_sent: int, gen: int) -> int:
        room = self._window() - len(inflight)
        if room <= 0:
            return last_sent
        for seq, payload in self.outbox.pending(room, after=last_sent):
            with self._pub_lock:
                # A reconnect started since we looked: paho will re-send what it holds first; publish
                # nothing newer until those are acknowledged (the next loop sees the new generation).
                if self._conn_gen != gen or not self._connected.is_set():
                    self._wake.set()
                    break
                info = self._client.publish(self.topic_verdict, payload, qos=self.config.verdict_qos, retain=False)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                log.warning("publish of verdict seq %d deferred: %s", seq, mqtt.error_string(info.rc))
                break
            inflight[info.mid] = seq  # NO_CONN: paho stored it and sends it after the reconnect
            last_sent = seq
            self._count("published")
        return last_sent

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[key] += n
