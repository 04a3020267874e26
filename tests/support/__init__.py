"""Shared test plumbing: the Docker engine, labelled test objects, cached image builds."""
