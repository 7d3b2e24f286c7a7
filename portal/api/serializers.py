"""What the API says about each model, and what it accepts."""

import copy

from django.core.exceptions import ValidationError as DjangoValidationError
from django.urls import reverse
from rest_framework import serializers

from dicomnodes.models import Instance, Peer, Series, Study, TransferJob, TransferKind, TransferLevel
from portal.models import StudyToken, TokenScope
from publishing.models import BurnJob
from worklist.models import WorklistItem


def model_errors(exc: DjangoValidationError):
    """A model's `ValidationError` as DRF's (a 400 with the same messages)."""
    if hasattr(exc, "error_dict"):
        return serializers.ValidationError(exc.message_dict)
    return serializers.ValidationError({"non_field_errors": exc.messages})


class StudySerializer(serializers.ModelSerializer):
    modalities = serializers.SerializerMethodField()
    series = serializers.SerializerMethodField()

    class Meta:
        model = Study
        fields = [
            "id",
            "study_instance_uid",
            "patient_id",
            "patient_name",
            "patient_birth_date",
            "patient_sex",
            "study_date",
            "study_time",
            "accession_number",
            "study_id",
            "study_description",
            "referring_physician_name",
            "modalities",
            "num_series",
            "num_instances",
            "created_at",
            "updated_at",
            "series",
        ]

    def get_modalities(self, obj) -> list[str]:
        return [m for m in obj.modalities_in_study.split("\\") if m]

    def get_series(self, obj) -> str:
        """Where this study's series are listed."""
        return _absolute(self, reverse("api:series-list") + f"?study={obj.pk}")


class SeriesSerializer(serializers.ModelSerializer):
    study_instance_uid = serializers.CharField(source="study.study_instance_uid", read_only=True)
    instances = serializers.SerializerMethodField()

    class Meta:
        model = Series
        fields = [
            "id",
            "series_instance_uid",
            "study",
            "study_instance_uid",
            "modality",
            "series_number",
            "series_description",
            "body_part_examined",
            "series_date",
            "series_time",
            "institution_name",
            "station_name",
            "num_instances",
            "created_at",
            "instances",
        ]

    def get_instances(self, obj) -> str:
        return _absolute(self, reverse("api:instance-list") + f"?series={obj.pk}")


class InstanceSerializer(serializers.ModelSerializer):
    series_instance_uid = serializers.CharField(source="series.series_instance_uid", read_only=True)
    file = serializers.SerializerMethodField()

    class Meta:
        model = Instance
        fields = [
            "id",
            "sop_instance_uid",
            "series",
            "series_instance_uid",
            "sop_class_uid",
            "instance_number",
            "transfer_syntax_uid",
            "file_size",
            "called_ae",
            "calling_ae",
            "received_at",
            "file",
        ]

    def get_file(self, obj) -> str:
        """The stored DICOM file (application/dicom)."""
        return _absolute(self, reverse("api:instance-file", args=[obj.pk]))


class PeerSerializer(serializers.ModelSerializer):
    class Meta:
        model = Peer
        fields = [
            "id",
            "name",
            "ae_title",
            "host",
            "port",
            "may_store",
            "may_query",
            "may_retrieve",
            "is_move_destination",
            "check_host",
            "notes",
        ]

    def validate(self, attrs):
        # The model's own rules (clean(), the unique AE/host/port), as in the admin.
        peer = copy.copy(self.instance) if self.instance is not None else Peer()
        for name, value in attrs.items():
            setattr(peer, name, value)
        try:
            peer.full_clean(validate_unique=False, validate_constraints=True)
        except DjangoValidationError as exc:
            raise model_errors(exc) from None
        return attrs


class EchoResultSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    round_trip_ms = serializers.FloatField(allow_null=True, help_text="C-ECHO request to response, in ms.")
    message = serializers.CharField()


class TransferJobSerializer(serializers.ModelSerializer):
    peer_name = serializers.CharField(source="peer.name", read_only=True)
    progress = serializers.CharField(source="progress_text", read_only=True)
    queue_position = serializers.SerializerMethodField()
    requested_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = TransferJob
        fields = [
            "id",
            "kind",
            "peer",
            "peer_name",
            "level",
            "uids",
            "study_uid",
            "series_uid",
            "move_destination",
            "description",
            "state",
            "total",
            "done",
            "failed",
            "bytes",
            "rate",
            "progress",
            "queue_position",
            "attempts",
            "next_attempt_at",
            "last_error",
            "cancel_requested",
            "requested_by",
            "created_at",
            "started_at",
            "finished_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_queue_position(self, obj) -> int | None:
        return obj.queue_position()


class TransferJobCreateSerializer(serializers.Serializer):
    """A new job; `dicomnodes.transfers.jobs.submit_job` checks it and queues it."""

    kind = serializers.ChoiceField(choices=TransferKind.choices)
    peer = serializers.PrimaryKeyRelatedField(queryset=Peer.objects.all())
    level = serializers.ChoiceField(choices=TransferLevel.choices, default=TransferLevel.STUDY)
    uids = serializers.ListField(child=serializers.CharField(max_length=64), min_length=1)
    study_uid = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    series_uid = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    move_destination = serializers.CharField(max_length=16, required=False, allow_blank=True, default="")
    description = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")


class WorklistItemSerializer(serializers.ModelSerializer):
    class Meta:
        model = WorklistItem
        exclude = ["patient_name_upper"]
        read_only_fields = ["created_at", "updated_at"]


def _absolute(serializer, path):
    request = serializer.context.get("request")
    return request.build_absolute_uri(path) if request else path


class StudyTokenSerializer(serializers.ModelSerializer):
    """A study token as stored: its hash is not shown, the clear token never is
    (only once, in the answer to the POST that made it)."""

    study_instance_uid = serializers.CharField(source="study.study_instance_uid", read_only=True)
    state = serializers.SerializerMethodField()
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = StudyToken
        fields = [
            "id",
            "study",
            "study_instance_uid",
            "scope",
            "state",
            "created_at",
            "created_by",
            "expires_at",
            "revoked_at",
            "use_count",
            "last_used_at",
        ]
        read_only_fields = fields

    def get_state(self, obj) -> str:
        """usable, expired or revoked."""
        if obj.is_revoked():
            return "revoked"
        return "expired" if obj.is_expired() else "usable"


class StudyTokenCreateSerializer(serializers.Serializer):
    study = serializers.PrimaryKeyRelatedField(queryset=Study.objects.all())
    scope = serializers.ChoiceField(choices=TokenScope.choices, default=TokenScope.STUDY)


class NewStudyTokenSerializer(StudyTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="The clear token: shown this once, never stored.")
    url = serializers.CharField(read_only=True, help_text="The link to give the patient or physician.")

    class Meta(StudyTokenSerializer.Meta):
        fields = [*StudyTokenSerializer.Meta.fields, "token", "url"]
        read_only_fields = fields


class BurnJobSerializer(serializers.ModelSerializer):
    publisher = serializers.SlugRelatedField(slug_field="name", read_only=True)
    discs = serializers.SerializerMethodField()

    class Meta:
        model = BurnJob
        fields = [
            "id",
            "kind",
            "trigger",
            "publisher",
            "state",
            "due_at",
            "robot_job_id",
            "good_discs",
            "bad_discs",
            "message",
            "attempts",
            "studies",
            "discs",
            "created_at",
            "updated_at",
            "submitted_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_discs(self, obj) -> list[dict]:
        """Each disc image: number of count, media, robot job ID, state, good/bad discs."""
        return [
            {
                "number": d.number,
                "count": d.count,
                "media": d.media,
                "robot_job_id": d.robot_job_id,
                "state": d.state,
                "good_discs": d.good_discs,
                "bad_discs": d.bad_discs,
            }
            for d in obj.discs.all()
        ]
