"""Test helpers: a local S3 endpoint, a fault-injecting proxy in front of it, fault plans.

Production code calls only the hooks of `faults`, which do nothing unless a test switched a plan on.
"""
