"""The viewer release we serve: an upgrade is a bump of these two lines
(`npm view @ohif/app@<version> dist.integrity` gives the hash)."""

VERSION = "3.13.2"
INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
