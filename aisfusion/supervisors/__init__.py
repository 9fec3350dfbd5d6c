"""Supervision: restart policy and supervisors for storage writers."""
