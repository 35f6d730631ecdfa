"""SO(3) features as one array [N, (lmax + 1)^2, C] (real spherical-harmonic coefficients in
e3nn's order), the blocks EquiformerV2 and eSCN share on them (fairchem 1.x's array layout).

input_stage.py: the DeNS input stage (input checks, atom embedding plus force encoding, the
edge graph) both forward passes start with; edge_graph.py: what the message blocks read about
the edges, its construction and the node <-> edge maps; gaussian_smearing.py: the Gaussian basis
of edge lengths; so3_linear.py: the degree-wise linear map (``SO3_LinearV2``);
fairchem_import.py: what the importers of fairchem 1.x checkpoints share; settings.py: the
hyper-parameters both networks have (``SO3NetworkSettings``), which their settings extend.
The SO(2) mathematics of the edge frames lives in ``dens.models.so2``.
"""
