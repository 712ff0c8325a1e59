// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title NodeRegistry
/// @notice Binds an approved institution's Ethereum account to its medmesh node: the
///         node's libp2p PeerId, the fingerprint of the institution's post-quantum
///         OpenPGP certificate (v6, 32 bytes) and a display name.
/// @dev    A set of admins approves institutions, so a random address cannot pose as a
///         hospital. Only approved institutions can register a node.
contract NodeRegistry {
    /// @notice A registered node.
    struct Node {
        bytes peerId;
        bytes32 certFingerprint;
        string name;
        uint64 registeredAt;
        bool active;
    }

    /// @notice Addresses allowed to approve institutions and manage admins.
    mapping(address => bool) public isAdmin;
    /// @notice Number of admins (never drops to zero).
    uint256 public adminCount;
    /// @notice Institutions approved by the admins.
    mapping(address => bool) public isApproved;
    mapping(address => Node) private nodes;
    /// @notice Fingerprint of the v6 OpenPGP certificate each account receives data keys
    ///         with (researchers and patients publish their own; zero when none).
    mapping(address => bytes32) public keyOf;

    /// @notice Longest accepted PeerId (multihash bytes) and name.
    uint256 public constant MAX_PEER_ID_LENGTH = 128;
    uint256 public constant MAX_NAME_LENGTH = 128;

    event AdminAdded(address indexed admin, address indexed by);
    event AdminRemoved(address indexed admin, address indexed by);
    event InstitutionApproved(address indexed institution, address indexed by);
    event InstitutionRevoked(address indexed institution, address indexed by);
    event NodeRegistered(address indexed institution, bytes peerId, bytes32 certFingerprint, string name);
    event KeyPublished(address indexed account, bytes32 certFingerprint);

    /// @notice The caller is not an admin.
    error NotAdmin(address caller);
    /// @notice The caller is not an approved institution.
    error NotApprovedInstitution(address caller);
    /// @notice The PeerId is empty or too long.
    error InvalidPeerId();
    /// @notice The certificate fingerprint is zero.
    error InvalidFingerprint();
    /// @notice The name is empty or too long.
    error InvalidName();
    /// @notice The zero address was given.
    error ZeroAddress();
    /// @notice Removing the last admin would leave the registry ungoverned.
    error LastAdmin();

    /// @param admins Initial admins; the deployer when empty.
    constructor(address[] memory admins) {
        if (admins.length == 0) {
            _addAdmin(msg.sender);
        }
        for (uint256 i = 0; i < admins.length; i++) {
            _addAdmin(admins[i]);
        }
    }

    modifier onlyAdmin() {
        if (!isAdmin[msg.sender]) revert NotAdmin(msg.sender);
        _;
    }

    /// @notice Adds an admin.
    function addAdmin(address admin) external onlyAdmin {
        _addAdmin(admin);
    }

    /// @notice Removes an admin (not the last one).
    function removeAdmin(address admin) external onlyAdmin {
        if (!isAdmin[admin]) return;
        if (adminCount == 1) revert LastAdmin();
        isAdmin[admin] = false;
        adminCount -= 1;
        emit AdminRemoved(admin, msg.sender);
    }

    /// @notice Approves an institution's account, allowing it to register a node.
    function approveInstitution(address institution) external onlyAdmin {
        if (institution == address(0)) revert ZeroAddress();
        isApproved[institution] = true;
        emit InstitutionApproved(institution, msg.sender);
    }

    /// @notice Withdraws an approval; the institution's node stops counting as registered.
    function revokeInstitution(address institution) external onlyAdmin {
        isApproved[institution] = false;
        nodes[institution].active = false;
        emit InstitutionRevoked(institution, msg.sender);
    }

    /// @notice Registers (or updates) the caller's node.
    /// @param peerId The node's libp2p PeerId, as multihash bytes.
    /// @param certFingerprint Fingerprint of the institution's v6 OpenPGP certificate.
    /// @param name Display name of the institution.
    function registerNode(bytes calldata peerId, bytes32 certFingerprint, string calldata name) external {
        if (!isApproved[msg.sender]) revert NotApprovedInstitution(msg.sender);
        if (peerId.length == 0 || peerId.length > MAX_PEER_ID_LENGTH) revert InvalidPeerId();
        if (certFingerprint == bytes32(0)) revert InvalidFingerprint();
        if (bytes(name).length == 0 || bytes(name).length > MAX_NAME_LENGTH) revert InvalidName();
        nodes[msg.sender] = Node(peerId, certFingerprint, name, uint64(block.timestamp), true);
        keyOf[msg.sender] = certFingerprint;
        emit NodeRegistered(msg.sender, peerId, certFingerprint, name);
    }

    /// @notice Publishes the fingerprint of the certificate the caller receives data keys
    ///         with. Any account may do so for itself; zero withdraws it.
    function publishKey(bytes32 certFingerprint) external {
        keyOf[msg.sender] = certFingerprint;
        emit KeyPublished(msg.sender, certFingerprint);
    }

    /// @notice The node registered by `institution` (empty if none).
    function nodeOf(address institution) external view returns (Node memory) {
        return nodes[institution];
    }

    /// @notice Whether `institution` is approved and has an active node.
    function isRegistered(address institution) public view returns (bool) {
        return isApproved[institution] && nodes[institution].active;
    }

    function _addAdmin(address admin) private {
        if (admin == address(0)) revert ZeroAddress();
        if (isAdmin[admin]) return;
        isAdmin[admin] = true;
        adminCount += 1;
        emit AdminAdded(admin, msg.sender);
    }
}
