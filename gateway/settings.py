"""One typed settings object for the whole gateway.

Values come, highest priority first, from `MUGAIKA_*` environment variables, an optional
TOML file (`--config` or `MUGAIKA_CONFIG`), then the defaults below. The object is built
once at start-up and passed down; nothing reads the environment after that.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import tomli
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

MiB = 1024 * 1024

CommaList = Annotated[list[str], NoDecode]


# --- tenants (issue 19, docs/tenants.md): part of the settings ---------------------------
DEFAULT_TENANT = "default"
#: What to do with an attachment of a content kind: today's rendering as pages (the
#: default), remove it, or remove it and hold it for release.
Treatment = Literal["render", "remove", "quarantine"]
#: PDF and Office may also be cleaned and kept editable (issue 20, docs/cdr.md): `cdr`
#: delivers the cleaned file only, `both` the cleaned file and the page images.
EditableTreatment = Literal["render", "remove", "quarantine", "cdr", "both"]
KINDS = ("pdf", "office", "image", "archive", "text", "unknown")


class Downstream(BaseModel):
    """A tenant's LGWAN-side mail server; unset fields come from the global settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(default=25, ge=1, le=65535)
    starttls: Literal["off", "opportunistic", "required"] | None = None
    verify_cert: bool | None = None


class TenantPolicy(BaseModel):
    """A tenant's departures from the global policy; None keeps the global value."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    pdf: EditableTreatment | None = None
    office: EditableTreatment | None = None
    image: Treatment | None = None
    archive: Treatment | None = None
    text: Treatment | None = None
    unknown: Treatment | None = None
    links: Literal["defang", "remove", "keep"] | None = None
    ppap: Literal["hold", "refuse"] | None = None
    subject_tag: str | None = Field(default=None, max_length=64)
    language: Literal["ja", "en"] | None = None
    notice_contact: str | None = Field(default=None, max_length=200)
    templates_dir: Path | None = None
    release_requires_approval: bool | None = None
    retention_days: int | None = Field(default=None, ge=1, le=3650)
    #: The first-contact rule for this tenant (None: the global one).
    first_contact_days: int | None = Field(default=None, ge=0, le=3650)
    first_contact_exempt: tuple[str, ...] | None = None

    def overrides(self) -> dict[str, object]:
        """The `Settings` fields this policy sets."""
        names = {"links": "links", "ppap": "ppap", "subject_tag": "subject_tag", "language": "language",
                 "notice_contact": "notice_contact", "templates_dir": "templates_dir",
                 "release_requires_approval": "release_requires_approval",
                 "retention_days": "quarantine_retention_days",
                 "first_contact_days": "first_contact_days",
                 "first_contact_exempt": "first_contact_exempt"}
        found: dict[str, object] = {f"treatment_{k}": getattr(self, k) for k in KINDS}
        found.update({field: getattr(self, key) for key, field in names.items()})
        return {k: v for k, v in found.items() if v is not None}


class Tenant(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9-]{1,32}$")
    name: str = Field(min_length=1, max_length=100)
    domains: tuple[str, ...] = Field(min_length=1)
    downstream: Downstream | None = None
    policy: TenantPolicy = TenantPolicy()

    @field_validator("domains", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        if isinstance(value, (list, tuple)):
            return tuple(str(d).strip().lower().rstrip(".") for d in value)
        return value


def check_tenants(tenants: Iterable[Tenant], accepted_domains: Iterable[str]) -> None:
    """Raise ValueError when an id is used twice or a domain belongs to two tenants (or to
    a tenant and the global `accepted_domains`, which are the default tenant's)."""
    owner = {d: DEFAULT_TENANT for d in accepted_domains}
    ids = {DEFAULT_TENANT}
    for tenant in tenants:
        if tenant.id in ids:
            raise ValueError(f"tenant id {tenant.id!r} is used twice (or is reserved)")
        ids.add(tenant.id)
        for domain in tenant.domains:
            if domain in owner:
                raise ValueError(f"domain {domain!r} belongs to tenants {owner[domain]!r} "
                                 f"and {tenant.id!r}")
            owner[domain] = tenant.id



class Toml11Source(TomlConfigSettingsSource):
    """The settings file read as TOML 1.1 (tomli): an inline table may span lines, as a
    tenant's `policy = { … }` is written in docs/tenants.md; Python 3.11's tomllib
    knows only TOML 1.0 and refuses that."""

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        with file_path.open(mode="rb") as fh:
            return tomli.load(fh)


class Settings(BaseSettings):
    """Everything an operator can set. The README's settings table mirrors this class."""

    model_config = SettingsConfigDict(env_prefix="MUGAIKA_", extra="forbid", frozen=True)

    # --- inbound SMTP ---------------------------------------------------------------
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    hostname: str = Field(default="mugaika.localdomain", description="HELO name and Received by")
    accepted_domains: CommaList = Field(default_factory=lambda: ["example.lg.jp"])
    #: Where mail to the bare `postmaster` (RFC 5321 4.5.1) goes; None: postmaster@ the
    #: first accepted domain.
    postmaster: str | None = None
    max_message_bytes: int = 25 * MiB
    max_recipients: int = 100
    max_line_bytes: int = Field(
        default=8192, description="DATA lines longer than this are refused (RFC 5322 says 998)"
    )
    smtp_timeout: float = 60.0
    max_connections: int = 200
    max_connections_per_client: int = 20
    max_commands_per_session: int = 1000

    # --- delivery -------------------------------------------------------------------
    downstream_host: str | None = None
    downstream_port: int = 25
    downstream_starttls: Literal["opportunistic", "required", "off"] = "opportunistic"
    downstream_verify_cert: bool = True
    downstream_timeout: float = 60.0
    downstream_pool_size: int = 8
    retry_first_seconds: float = 300.0
    retry_max_seconds: float = 3600.0
    max_queue_lifetime_seconds: float = 5 * 24 * 3600.0

    # --- workers and data -----------------------------------------------------------
    workers: int = Field(default_factory=lambda: max(1, os.cpu_count() or 1))
    #: Gateway processes sharing the SMTP port (SO_REUSEPORT) and the spool, one per core
    #: by default: one process tops out below a core, its SMTP sessions, sanitize threads
    #: and deliveries sharing one GIL (`gateway.processes`, docs/performance.md).
    processes: int = Field(default_factory=lambda: max(1, os.cpu_count() or 1), ge=1)
    data_dir: Path = Path("./var")
    database_url: SecretStr | None = None

    # --- HTTP API -------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8025
    api_enabled: bool = True
    #: /docs, /redoc and /openapi.json: off unless asked for (they describe every route).
    api_docs: bool = False
    metrics_public: bool = True
    release_requires_approval: bool = True

    # --- policy ---------------------------------------------------------------------
    language: Literal["ja", "en"] = "ja"
    subject_tag: str = "[無害化]"
    #: Links in the text: `defang` (hxxp://, shown, never clickable), `remove` (replaced by
    #: [リンク削除]) or `keep` (as written; a client may make them clickable).
    links: Literal["defang", "remove", "keep"] = "defang"
    prefer_html: bool = False
    output_charset: Literal["utf-8", "iso-2022-jp"] = "utf-8"
    max_mime_depth: int = 20
    max_mime_parts: int = 500
    pdf_dpi: int = 150
    pdf_max_pages: int = 50
    pdf_output: Literal["pdf", "png", "jpeg"] = "pdf"
    pdf_extract_text: bool = True
    # issue 20: OCR (docs/ocr.md)
    #: Recognize text on pages without a text layer (scans, photos), in the sandbox.
    ocr: bool = True
    #: Also put the recognized words into the image-only PDF as invisible, searchable text.
    ocr_text_layer: bool = False
    #: Wall clock for one page's recognition; the page keeps its image, the note says so.
    ocr_page_seconds: float = Field(default=20.0, gt=0)
    #: tesseract models, joined by + (Debian: tesseract-ocr-<name>).
    ocr_languages: str = Field(default="jpn+jpn_vert+eng", pattern=r"^[a-z_]+(\+[a-z_]+)*$")
    archive_max_depth: int = 3
    archive_max_members: int = 1000
    archive_max_total_bytes: int = 200 * MiB
    archive_max_ratio: int = 100
    converter_timeout_seconds: float = 60.0
    converter_memory_bytes: int = 1024 * MiB
    allow_unsandboxed: bool = False
    quarantine_retention_days: int = 30
    notice_contact: str = "情報政策課 (内線 1234)"
    templates_dir: Path | None = None
    # Warm sandboxed converter processes; 0 = one per worker. Each idles at ~30 MB RSS.
    converter_workers: int = 0
    converter_max_documents: int = Field(
        default=200, ge=1, description="replace a converter worker after N conversions")
    # issue 5: Office, archives, mail in mail (docs/office-archives.md)
    office_pool_size: int = Field(default=1, description="warm LibreOffice instances, 340 MB each")
    office_max_documents: int = Field(default=200, description="recycle an instance after N docs")
    office_timeout_seconds: float = Field(default=60.0, description="per document; then restart")
    archive_output: Literal["members", "zip"] = Field(
        default="members", description="renderings attached one by one, or re-zipped into one")
    forward_output: Literal["eml", "inline"] = Field(
        default="eml", description="forwarded mail as a sanitized .eml, or inlined as text")
    forward_max_depth: int = Field(default=3, description="mail-in-mail levels sanitized")
    #: Encrypted attachments (PPAP): `hold` them (the recipient or an operator releases them
    #: with the password) or `refuse` them (held for the record, never released by password).
    ppap: Literal["hold", "refuse"] = "hold"
    #: PPAP release: wrong passwords allowed per quarantine entry before it is locked.
    ppap_max_password_attempts: int = Field(default=5, ge=1)
    #: Interval of the server's scheduled quarantine purge (expired entries), in seconds.
    quarantine_purge_interval_seconds: float = Field(default=3600.0, gt=0)
    #: Public URL of the API for the recipient's release link in the notice (off when unset).
    release_link_base_url: str | None = None
    #: HMAC key of those links; the same on every node. Links are off without it.
    release_link_key: SecretStr | None = None
    # issue 18: the recipients' daily digest of their held mail (docs/quarantine-api.md)
    digest_enabled: bool = False
    #: Local hour (0-23, in digest_timezone) from which the server sends the day's digest.
    digest_hour: int = Field(default=8, ge=0, le=23)
    #: IANA zone of the digest's hour and of the times printed in recipients' mail.
    digest_timezone: str = "Asia/Tokyo"
    # issue 18: the web console (docs/console.md)
    console_enabled: bool = True
    #: A console session ends after this long without a request, and after max hours.
    console_idle_minutes: float = Field(default=30.0, gt=0)
    console_session_hours: float = Field(default=12.0, gt=0)
    #: Wrong passwords in a row before an account is locked, and for how long.
    console_max_failed_logins: int = Field(default=5, ge=1)
    console_lockout_minutes: float = Field(default=15.0, gt=0)
    #: Secure cookies: "auto" when the request came over HTTPS (or a proxy says so).
    console_secure_cookies: Literal["auto", "always", "never"] = "auto"

    # issue 19: tenants (docs/tenants.md); each treatment is the default for its content
    # kind, which a tenant's policy may change: render as pages, remove, or quarantine
    treatment_pdf: EditableTreatment = "render"
    treatment_office: EditableTreatment = "render"
    treatment_image: Treatment = "render"
    treatment_archive: Treatment = "render"
    treatment_text: Treatment = "render"
    treatment_unknown: Treatment = "render"
    #: The first-contact rule (m-FILTER's 90-day rule): mail from a sender address not seen
    #: in this many days (0: off) has every attachment held; exempt: partner domains.
    first_contact_days: int = Field(default=0, ge=0, le=3650)
    first_contact_exempt: CommaList = Field(default_factory=list)

    # issue 21: sender authentication before the rebuild (docs/sender-auth.md)
    #: SPF, DKIM, DMARC and ARC on the original; off: no checks, no header, no policy.
    auth_checks: bool = True
    #: DNS servers for the checks: `host` or `host:port`, comma separated; none: the system's.
    dns_servers: CommaList = Field(default_factory=list)
    dns_timeout_seconds: float = Field(default=2.0, gt=0, le=30)
    #: DMARC `fail` where the sender's domain publishes p=quarantine or p=reject:
    #: `quarantine` the whole message (releasable as usual), `tag` it, or `none`.
    dmarc_fail_action: Literal["quarantine", "tag", "none"] = "quarantine"
    #: Mail from outside whose From: uses one of our own domains (or shows one of our
    #: addresses in its display name) without passing DMARC: `quarantine` or `tag`.
    spoof_action: Literal["quarantine", "tag"] = "quarantine"
    #: Put before the subject of mail that failed authentication and is delivered (`tag`).
    auth_fail_subject_tag: str = Field(default="[なりすまし注意]", max_length=64)
    #: ARC-seal the rebuilt message (RFC 8617) so that the LGWAN-side server can trust the
    #: Authentication-Results it carries: a PEM private key file, selector and domain.
    arc_seal_key: Path | None = None
    arc_seal_selector: str = Field(default="", max_length=63)
    arc_seal_domain: str = Field(default="", max_length=253)
    #: `[[tenants]]` tables of the TOML file; none: one implicit tenant, these settings.
    tenants: tuple[Tenant, ...] = ()

    toml_path: ClassVar[Path | None] = None

    @model_validator(mode="after")
    def _tenants_apart(self) -> Settings:
        check_tenants(self.tenants, self.accepted_domains)
        return self

    @model_validator(mode="after")
    def _arc_seal_whole(self) -> Settings:
        """A sealing key needs its selector and domain (and must be readable)."""
        if self.arc_seal_key is not None:
            if not (self.arc_seal_selector and self.arc_seal_domain):
                raise ValueError("arc_seal_key needs arc_seal_selector and arc_seal_domain")
            if not self.arc_seal_key.is_file():
                raise ValueError(f"arc_seal_key {self.arc_seal_key} is not a file")
        return self

    @field_validator("digest_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("accepted_domains", "first_contact_exempt", "dns_servers", mode="before")
    @classmethod
    def _split_domains(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [d.strip().lower() for d in value.split(",") if d.strip()]
        if isinstance(value, list):
            return [str(d).strip().lower() for d in value]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = getattr(settings_cls, "toml_path", None)
        if toml is not None:
            sources.append(Toml11Source(settings_cls, toml_file=toml))
        return tuple(sources)

    # --- derived paths --------------------------------------------------------------
    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def maildir(self) -> Path:
        """Where delivery goes when no downstream host is set (a newcomer's first run)."""
        return self.data_dir / "maildir"

    @property
    def effective_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.data_dir / 'mugaika.db').resolve()}"


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from environment, TOML file (`config` or `MUGAIKA_CONFIG`) and defaults."""
    path = config or (Path(os.environ["MUGAIKA_CONFIG"]) if os.environ.get("MUGAIKA_CONFIG") else None)
    if path is None:
        return Settings(**overrides)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    bound = type("TomlSettings", (Settings,), {"toml_path": path})
    read: Settings = bound(**overrides)
    # As a plain Settings: the class made here cannot be pickled, and a group of gateway
    # processes hands its settings to each child (`gateway.processes`).
    return Settings.model_construct(read.model_fields_set, **dict(read))


#: The settings a reload (SIGHUP, `gateway.reload`) applies; any other difference in the
#: file needs a restart.
RELOADABLE = ("tenants", "accepted_domains", "treatment_pdf", "treatment_office",
              "treatment_image", "treatment_archive", "treatment_text", "treatment_unknown",
              "first_contact_days", "first_contact_exempt", "links", "ppap")
#: What a configuration file that does not load raises.
LOAD_ERRORS = (ValidationError, tomli.TOMLDecodeError, FileNotFoundError, ValueError)


def with_reloadable(current: Settings, fresh: Settings) -> Settings:
    """`current` with the reloadable settings taken from `fresh`."""
    return current.model_copy(update={name: getattr(fresh, name) for name in RELOADABLE})


def describe(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain values with secrets masked (`check-config`), and
    each tenant's effective policy (`tenants`: what its mail is handled under)."""
    out: dict[str, Any] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = "********"
        elif isinstance(value, Path):
            value = str(value)
        out[name] = value
    out["tenants"] = [_effective(settings, t) for t in settings.tenants]
    return out


#: What `check-config` prints of a tenant's effective settings.
POLICY_FIELDS = ("treatment_pdf", "treatment_office", "treatment_image", "treatment_archive",
                 "treatment_text", "treatment_unknown", "first_contact_days",
                 "first_contact_exempt", "subject_tag", "language",
                 "notice_contact", "templates_dir", "release_requires_approval",
                 "quarantine_retention_days", "downstream_host", "downstream_port",
                 "downstream_starttls", "downstream_verify_cert")


def _effective(settings: Settings, tenant: Tenant) -> dict[str, Any]:
    own = tenant_settings(settings, tenant)
    policy = {name: _plain(getattr(own, name)) for name in POLICY_FIELDS}
    return {"id": tenant.id, "name": tenant.name, "domains": list(tenant.domains),
            "policy": policy}


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def tenant_settings(settings: Settings, tenant: Tenant) -> Settings:
    """The settings `tenant`'s mail is handled under: the global ones with its policy and
    downstream laid over them (`gateway.tenancy.Tenancy` keeps one per tenant)."""
    update = tenant.policy.overrides()
    if tenant.downstream is not None:
        down = tenant.downstream
        update.update({"downstream_host": down.host, "downstream_port": down.port})
        if down.starttls is not None:
            update["downstream_starttls"] = down.starttls
        if down.verify_cert is not None:
            update["downstream_verify_cert"] = down.verify_cert
    return settings.model_copy(update=update)
