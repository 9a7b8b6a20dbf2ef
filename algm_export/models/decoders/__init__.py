"""Decoders behind `algm_export.models.base.Decoder`: token decoders and feature-map decoders, one file per family."""
