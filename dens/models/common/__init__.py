"""Building blocks shared by the model families: features as per-degree tensor lists
(so3_features), SO(3)-linear layers, gates, equivariant layer norm and dropout, radial bases,
and per-part initialisation (initialization)."""
