"""Portal: the HTTP server settings (one row) and study tokens for patients
and physicians.

A token is a random string handed out once (a link, a QR code); the table
keeps only its SHA-256, so a copy of the database opens no study.
"""

import calendar
import datetime as dt
import hashlib
import ipaddress
import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from dicomnodes.models import DicomServerSettings, Study
from pacs_site.ports import machine_addresses
from pacs_site.singleton import SingletonModel
from pacs_site.tls import check_certificate_pair
from worklist.models import WorklistSettings

# 48 random bytes -> 64 URL-safe characters, 384 bits (≥ 128 asked).
TOKEN_BYTES = 48


class Accessibility(models.TextChoices):
    """How long after the study date a token opens the study."""

    ONE_WEEK = "1w", "1 week"
    ONE_MONTH = "1m", "1 month"
    THREE_MONTHS = "3m", "3 months"
    SIX_MONTHS = "6m", "6 months"
    ONE_YEAR = "1y", "1 year"
    UNLIMITED = "unlimited", "unlimited"


# Accessibility -> (days, months) added to the study date.
_PERIODS = {
    Accessibility.ONE_WEEK: (7, 0),
    Accessibility.ONE_MONTH: (0, 1),
    Accessibility.THREE_MONTHS: (0, 3),
    Accessibility.SIX_MONTHS: (0, 6),
    Accessibility.ONE_YEAR: (0, 12),
}


def add_period(day: dt.date, accessibility: str) -> dt.date | None:
    """`day` + the accessibility period; None for unlimited.  Months are
    calendar months; the 31st plus a month gives the month's last day."""
    if accessibility == Accessibility.UNLIMITED:
        return None
    days, months = _PERIODS[accessibility]
    if months:
        index = day.month - 1 + months
        year, month = day.year + index // 12, index % 12 + 1
        return dt.date(year, month, min(day.day, calendar.monthrange(year, month)[1]))
    return day + dt.timedelta(days=days)


def detected_public_ip() -> str:
    """The address others most likely reach us at: the first global IPv4,
    else a private IPv4, else a global IPv6, else 127.0.0.1."""
    ranked = []
    for _iface, _family, text in machine_addresses():
        try:
            addr = ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            continue
        if addr.is_loopback or addr.is_link_local or addr.is_unspecified:
            continue
        rank = (addr.version == 6) * 2 + (not addr.is_global)
        ranked.append((rank, str(addr)))
    return min(ranked)[1] if ranked else "127.0.0.1"


class HttpSettings(SingletonModel):
    institution = models.CharField(max_length=128, blank=True, help_text="Shown at the top of every web page.")
    department = models.CharField(max_length=128, blank=True, help_text="Shown under the institution.")
    web_port = models.PositiveIntegerField(
        "web port",
        default=3000,
        validators=[MaxValueValidator(65535)],
        help_text="TCP port of the web server (admin, patient links, API); 0 switches it off. "
        "A change restarts the web server within a few seconds.",
    )
    web_server_name = models.CharField(
        "web server name",
        max_length=253,
        blank=True,
        help_text="Host name used in patient links (e.g. pacs.example.org). Blank: the public IP is used.",
    )
    public_ip = models.GenericIPAddressField(
        "public IP (override)",
        blank=True,
        null=True,
        help_text="Leave blank to use the address detected from this machine's interfaces; "
        "set it when the server is reached through another address (NAT).",
    )
    tls_enabled = models.BooleanField(
        "TLS (HTTPS)", default=False, help_text="Serve HTTPS with the certificate and key below."
    )
    tls_certificate_file = models.CharField(
        "certificate file (.crt)", max_length=1024, blank=True, help_text="Absolute path of a PEM certificate."
    )
    tls_key_file = models.CharField(
        "key file (.key)",
        max_length=1024,
        blank=True,
        help_text="Absolute path of its PEM private key, without a password.",
    )
    study_accessibility = models.CharField(
        max_length=16,
        choices=Accessibility.choices,
        default=Accessibility.ONE_MONTH,
        help_text="How long after the study date a patient or physician link works. "
        "A link keeps the expiry it was created with.",
    )
    preview_max_megapixels = models.PositiveIntegerField(
        "largest previewed frame (megapixels)",
        default=32,
        validators=[MinValueValidator(1), MaxValueValidator(1000)],
        help_text="Series previews decode one frame of the middle image; a frame of more pixels "
        "than this (rows × columns × samples) gets no preview and is not decoded. "
        "Decoding takes about 7 bytes of memory per pixel in the web process.",
    )

    class Meta:
        verbose_name = "HTTP server settings"
        verbose_name_plural = "HTTP server settings"

    def __str__(self):
        scheme = "https" if self.tls_enabled else "http"
        return f"{scheme} on port {self.web_port or 'off'}"

    def clean(self):
        super().clean()
        if self.web_server_name and any(c.isspace() or c in "/?#@" for c in self.web_server_name):
            raise ValidationError({"web_server_name": "A host name only: no spaces, slashes or scheme."})
        if self.web_port:
            taken = _listener_ports().get(self.web_port)
            if taken:
                raise ValidationError({"web_port": f"Port {self.web_port} is the {taken}'s: choose another."})
        if self.tls_enabled:
            field = {"certificate": "tls_certificate_file", "key": "tls_key_file"}
            errors = {}
            for problem in check_certificate_pair(self.tls_certificate_file, self.tls_key_file):
                errors.setdefault(field[problem.field], []).append(str(problem))
            if errors:
                raise ValidationError(errors)

    def effective_public_ip(self) -> str:
        return self.public_ip or detected_public_ip()

    def base_url(self) -> str:
        """scheme://host:port of links we hand out."""
        host = self.web_server_name or self.effective_public_ip()
        if ":" in host:  # an IPv6 address
            host = f"[{host}]"
        scheme = "https" if self.tls_enabled else "http"
        return f"{scheme}://{host}:{self.web_port}"


def _listener_ports() -> dict:
    """port -> which of our other listeners uses it."""
    ports = {WorklistSettings.load().hl7_port: "HL7 listener", DicomServerSettings.load().port: "DICOM server"}
    ports.pop(0, None)
    return ports


class TokenScope(models.TextChoices):
    STUDY = "study", "this study"
    PATIENT = "patient", "all studies of the patient"


def hash_token(clear: str) -> str:
    return hashlib.sha256(clear.encode("ascii", "replace")).hexdigest()


class StudyToken(models.Model):
    """A link that opens one study (or all studies of its patient) without a login."""

    token_hash = models.CharField("SHA-256 of the token", max_length=64, unique=True, editable=False)
    study = models.ForeignKey("dicomnodes.Study", on_delete=models.CASCADE, related_name="tokens")
    scope = models.CharField(max_length=16, choices=TokenScope.choices, default=TokenScope.STUDY)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never expires.")
    revoked_at = models.DateTimeField(null=True, blank=True)
    use_count = models.PositiveIntegerField("uses", default=0)
    last_used_at = models.DateTimeField("last use", null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "study token"

    def __str__(self):
        return f"token {self.token_hash[:8]}… for {self.study}"

    def is_expired(self, now=None) -> bool:
        return self.expires_at is not None and (now or timezone.now()) >= self.expires_at

    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def is_usable(self, now=None) -> bool:
        return not self.is_revoked() and not self.is_expired(now)

    def revoke(self):
        """Revoke now (a second call keeps the first time)."""
        StudyToken.objects.filter(pk=self.pk, revoked_at=None).update(revoked_at=timezone.now())
        self.refresh_from_db(fields=["revoked_at"])

    def record_use(self):
        # F(): two requests at once both count.
        now = timezone.now()
        StudyToken.objects.filter(pk=self.pk).update(use_count=F("use_count") + 1, last_used_at=now)

    def studies(self):
        """The studies this token opens."""
        if self.scope == TokenScope.PATIENT:
            studies = Study.objects.filter(patient_record_id=self.study.patient_record_id)
            # Anyone may store by default: a study an unknown caller filed
            # under this Patient ID does not join the link (unless the DICOM
            # server setting "any sender ... joins patient links" is on).
            if not DicomServerSettings.load().trust_any_sender:
                studies = studies.filter(Q(from_known_peer=True) | Q(pk=self.study_id))
            return studies
        return Study.objects.filter(pk=self.study_id)


def token_expiry(study, accessibility: str, *, created_at=None):
    """When a token for `study` stops working: the study date + accessibility,
    at midnight (server time zone) of that day; None for unlimited.  A study
    without a (valid) date, or dated after the token's creation day, counts
    from the creation day: anyone who may store can send a StudyDate of
    99991231, and that must not make a link eternal."""
    created_at = created_at or timezone.now()
    created = timezone.localtime(created_at).date()
    try:
        start = min(dt.datetime.strptime(study.study_date, "%Y%m%d").date(), created)
    except (TypeError, ValueError):
        start = created
    end = add_period(start, accessibility)
    if end is None:
        return None
    return timezone.make_aware(dt.datetime.combine(end, dt.time.min))


def new_clear_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)
