"""One place for configuration: `RTCPROCTOR_*` environment variables, overridden by CLI flags."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "RTCPROCTOR_"


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in {"1", "true", "yes", "on"}:
        return True
    if v in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _policy(value: str) -> str:
    if value not in ("all", "relay"):
        raise ValueError("must be 'all' or 'relay'")
    return value


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"expected a whole number of at least 1, got {value!r}")
    return number


def _list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


@dataclass(frozen=True)
class VideoSettings:
    """What the student page asks the camera for.

    320x240 at 8 fps, capped at 250 kbit/s, keeps 40+ one-way uploads per proctor
    within an ordinary school network (~10 Mbit/s) while a face and hands stay
    readable; the large view shows the same stream scaled up.
    """

    width: int = 320
    height: int = 240
    frame_rate: int = 8
    max_bitrate: int = 250_000

    def as_json(self) -> dict[str, int]:
        return {
            "width": self.width,
            "height": self.height,
            "frameRate": self.frame_rate,
            "maxBitrate": self.max_bitrate,
        }


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 8080
    data_dir: Path = Path("data")
    database_url: str | None = None
    redis_url: str | None = None
    redis_prefix: str = "rtcproctor:"
    base_url: str | None = None
    log_level: str = "INFO"
    ice_loopback: bool = False
    stun_urls: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()
    turn_secret: str | None = None
    turn_ttl: int = 6 * 3600
    ice_transport_policy: str = "all"
    voice: bool = True
    voice_workers: int | None = None  # None: one per usable core but one, 1 to 4 (voice.worker)
    admin_token: str | None = None
    metrics_token: str | None = None
    trust_proxy: bool = False
    static_dir: Path | None = None
    video: VideoSettings = field(default_factory=VideoSettings)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'rtcproctor.db').resolve()}"

    @property
    def resolved_static_dir(self) -> Path:
        if self.static_dir:
            return self.static_dir
        return Path(__file__).resolve().parent.parent / "static"

    def public_base_url(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        host = "localhost" if self.host in {"0.0.0.0", "::", ""} else self.host
        return f"http://{host}:{self.port}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            return env.get(ENV_PREFIX + name)

        kwargs: dict[str, object] = {}
        converters: dict[str, tuple[str, object]] = {
            "HOST": ("host", str),
            "PORT": ("port", int),
            "DATA_DIR": ("data_dir", Path),
            "DATABASE_URL": ("database_url", str),
            "REDIS_URL": ("redis_url", str),
            "REDIS_PREFIX": ("redis_prefix", str),
            "BASE_URL": ("base_url", str),
            "LOG_LEVEL": ("log_level", str),
            "ICE_LOOPBACK": ("ice_loopback", _bool),
            "STUN_URLS": ("stun_urls", lambda v: tuple(_list(v))),
            "TURN_URLS": ("turn_urls", lambda v: tuple(_list(v))),
            "TURN_SECRET": ("turn_secret", str),
            "TURN_TTL": ("turn_ttl", int),
            "ICE_TRANSPORT_POLICY": ("ice_transport_policy", _policy),
            "VOICE": ("voice", _bool),
            "VOICE_WORKERS": ("voice_workers", _positive),
            "ADMIN_TOKEN": ("admin_token", str),
            "METRICS_TOKEN": ("metrics_token", str),
            "TRUST_PROXY": ("trust_proxy", _bool),
            "STATIC_DIR": ("static_dir", Path),
        }
        for env_name, (attr, convert) in converters.items():
            raw = get(env_name)
            if raw is None or raw == "":
                continue
            try:
                kwargs[attr] = convert(raw)  # type: ignore[operator]
            except ValueError as exc:
                raise ValueError(f"{ENV_PREFIX}{env_name}: {exc}") from exc
        video = VideoSettings()
        video_env = {
            "VIDEO_WIDTH": "width",
            "VIDEO_HEIGHT": "height",
            "VIDEO_FPS": "frame_rate",
            "VIDEO_MAX_BITRATE": "max_bitrate",
        }
        for env_name, attr in video_env.items():
            raw = get(env_name)
            if raw:
                video = dataclasses.replace(video, **{attr: int(raw)})
        kwargs["video"] = video
        return cls(**kwargs)  # type: ignore[arg-type]

    def override(self, **changes: object) -> Settings:
        """Apply CLI flags; `None` means the flag was not given."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
