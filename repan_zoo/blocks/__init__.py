"""Rep blocks (Eq. 3) and their branch kinds."""
from .bn import bn_params, is_bn_like
from .branches import BRANCH_KINDS, BlockSpec, Branch, branch_class, create_branch, register_branch
from .rep_block import RepBlock, check_lambda, init_branch_, rep_blocks

__all__ = [
    "BRANCH_KINDS",
    "BlockSpec",
    "Branch",
    "RepBlock",
    "bn_params",
    "branch_class",
    "check_lambda",
    "create_branch",
    "init_branch_",
    "is_bn_like",
    "register_branch",
    "rep_blocks",
]
