"""`manage.py ensureadmin`: an administrator login exists after the first run, once."""

from io import StringIO

from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command


def ensureadmin():
    out = StringIO()
    call_command("ensureadmin", stdout=out)
    return out.getvalue()


def test_the_first_run_creates_admin_with_a_password_kept_in_the_data_folder(db, data_dir):
    output = ensureadmin()

    username, password = (data_dir / "admin-password.txt").read_text().split()
    assert username == "admin"
    assert password in output
    user = authenticate(username="admin", password=password)
    assert user is not None and user.is_superuser and user.is_staff
    assert (data_dir / "admin-password.txt").stat().st_mode & 0o077 == 0  # only the owner reads it


def test_a_second_run_creates_nothing(db, data_dir):
    ensureadmin()
    kept = (data_dir / "admin-password.txt").read_text()

    output = ensureadmin()

    assert get_user_model().objects.count() == 1
    assert (data_dir / "admin-password.txt").read_text() == kept
    assert "an administrator exists" in output
