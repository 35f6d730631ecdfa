"""What every model family uses: per-part initialisation (initialization), the checks of a
batch and of the DeNS inputs (inputs), and the attention softmax over each node's incoming edges
(segment_softmax: Equiformer and EquiformerV2)."""
