"""DICOMweb (PS3.18): QIDO-RS, WADO-RS, STOW-RS and WADO-URI on the archive.

Two roots serve the same resources (`urls.py`): `/dicomweb/` for staff
(session or DRF token), and `/dicomweb/t/<token>/` for a patient link,
read-only and scoped to the link's studies (`access.py`).  Each view takes
the request's `Scope` and never sees a study outside it.
"""
