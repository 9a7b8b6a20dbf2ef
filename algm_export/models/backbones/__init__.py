"""Backbones: plain ViTs behind the `algm_export.models.base.Backbone` interface, one file per source."""
