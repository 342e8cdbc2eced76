"""The image stage: from a reference to an unpacked root.

A reference is parsed (reference), resolved to the digest of this platform's manifest and pulled into
the digest-keyed cache through skopeo (registry), then unpacked: flat, by umoci into one bundle
(bundle); shared, one layer at a time into the layer cache (layers plans the layer packages,
layerstore unpacks them), both reading every layer's tar (layertar) by one set of rules (layerrules).
"""
