// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {NodeRegistry} from "./NodeRegistry.sol";

/// @title ConsentRegistry
/// @notice Patients grant a grantee (an institution or researcher address) access to a
///         scope for a purpose until an expiry; they revoke, and delegate granting power
///         to a guardian or proxy. Grants and revocations can be signed off-chain
///         (EIP-712) and relayed by anyone, so a patient's wallet signs without paying
///         gas. A registered institution can open time-boxed emergency (break-glass)
///         access, always visible as an event the patient sees, and closable early.
/// @dev    Scopes are opaque 32-byte values computed off-chain: the sha2-256 digest of a
///         record's manifest (kind Record), a salted hash linking a patient reference at
///         one institution (kind PatientAtInstitution), or a dataset id (kind Dataset).
///         Purposes are GA4GH DUO term numbers (DUO:0000042 is 42).
contract ConsentRegistry {
    /// @notice What a scope names.
    enum ScopeKind {
        Record,
        PatientAtInstitution,
        Dataset
    }

    /// @notice A consent grant. One per (patient, grantee, kind, scope, purpose).
    struct Grant {
        address patient;
        address grantee;
        ScopeKind kind;
        bytes32 scope;
        uint32 purpose;
        uint64 expiry;
        bool revoked;
    }

    /// @notice A break-glass access.
    struct Emergency {
        address institution;
        address patient;
        bytes32 scope;
        uint64 until;
        bool closed;
    }

    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    /// @notice EIP-712 type of a signed grant.
    bytes32 public constant GRANT_TYPEHASH = keccak256(
        "GrantConsent(address patient,address grantee,uint8 kind,bytes32 scope,uint32 purpose,uint64 expiry,uint256 nonce,uint256 deadline)"
    );
    /// @notice EIP-712 type of a signed revocation.
    bytes32 public constant REVOKE_TYPEHASH = keccak256(
        "RevokeConsent(address patient,address grantee,uint8 kind,bytes32 scope,uint32 purpose,uint256 nonce,uint256 deadline)"
    );
    /// @notice EIP-712 domain name and version.
    string public constant NAME = "medmesh ConsentRegistry";
    string public constant VERSION = "1";
    /// @notice Longest break-glass access.
    uint64 public constant MAX_EMERGENCY = 1 days;
    uint256 private constant HALF_CURVE_ORDER =
        0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;

    NodeRegistry public immutable registry;
    mapping(bytes32 => Grant) private grants;
    /// @notice Delegation expiry per (patient, delegate); zero when none.
    mapping(address => mapping(address => uint64)) public delegateUntil;
    /// @notice Next EIP-712 nonce of each patient.
    mapping(address => uint256) public nonces;
    mapping(bytes32 => Emergency) private emergencies;
    uint256 private emergencyCounter;

    event GrantCreated(
        bytes32 indexed grantId,
        address indexed patient,
        address indexed grantee,
        ScopeKind kind,
        bytes32 scope,
        uint32 purpose,
        uint64 expiry,
        address by
    );
    event GrantRevoked(bytes32 indexed grantId, address indexed patient, address indexed grantee, address by);
    event DelegateSet(address indexed patient, address indexed delegate, uint64 until);
    event DelegateRevoked(address indexed patient, address indexed delegate);
    event EmergencyOpened(
        bytes32 indexed emergencyId,
        address indexed institution,
        address indexed patient,
        bytes32 scope,
        uint64 until,
        string reason
    );
    event EmergencyClosed(bytes32 indexed emergencyId, address indexed by);

    /// @notice The caller (or signer) may not act for this patient.
    error NotPatientOrDelegate(address caller, address patient);
    /// @notice The expiry is not in the future.
    error ExpiryInPast(uint64 expiry);
    /// @notice The grantee is the zero address.
    error ZeroGrantee();
    /// @notice No such grant.
    error UnknownGrant(bytes32 grantId);
    /// @notice The signed message is past its deadline.
    error SignatureExpired(uint256 deadline);
    /// @notice The signature is malformed or does not recover to an authorised signer.
    error InvalidSignature();
    /// @notice The signed nonce is not the patient's next one (replay or reordering).
    error InvalidNonce(uint256 expected, uint256 given);
    /// @notice The caller is not a registered institution.
    error NotRegisteredInstitution(address caller);
    /// @notice A break-glass access must last between one second and MAX_EMERGENCY.
    error InvalidDuration(uint64 duration);
    /// @notice A break-glass access needs a reason.
    error EmptyReason();
    /// @notice No such open emergency, or the caller may not close it.
    error CannotClose(bytes32 emergencyId, address caller);

    constructor(NodeRegistry registry_) {
        registry = registry_;
    }

    // ---- grants by transaction ---------------------------------------------------

    /// @notice Grants `grantee` access to `scope` for `purpose` until `expiry`, on behalf
    ///         of `patient` (the caller, or a delegate of the patient).
    function grant(address patient, address grantee, ScopeKind kind, bytes32 scope, uint32 purpose, uint64 expiry)
        external
        returns (bytes32 grantId)
    {
        _requireActor(msg.sender, patient);
        return _grant(patient, grantee, kind, scope, purpose, expiry, msg.sender);
    }

    /// @notice Revokes a grant (by the patient or a delegate).
    function revoke(bytes32 grantId) external {
        Grant storage g = grants[grantId];
        if (g.patient == address(0)) revert UnknownGrant(grantId);
        _requireActor(msg.sender, g.patient);
        _revoke(grantId, g, msg.sender);
    }

    // ---- delegation -------------------------------------------------------------

    /// @notice Lets `delegate` grant and revoke on the caller's behalf until `until`.
    function setDelegate(address delegate, uint64 until) external {
        if (delegate == address(0)) revert ZeroGrantee();
        if (until <= block.timestamp) revert ExpiryInPast(until);
        delegateUntil[msg.sender][delegate] = until;
        emit DelegateSet(msg.sender, delegate, until);
    }

    /// @notice Withdraws the delegation of `delegate`.
    function revokeDelegate(address delegate) external {
        delete delegateUntil[msg.sender][delegate];
        emit DelegateRevoked(msg.sender, delegate);
    }

    // ---- signed grants (EIP-712), relayed by anyone -----------------------------

    /// @notice The EIP-712 domain separator of this deployment.
    function domainSeparator() public view returns (bytes32) {
        return keccak256(
            abi.encode(DOMAIN_TYPEHASH, keccak256(bytes(NAME)), keccak256(bytes(VERSION)), block.chainid, address(this))
        );
    }

    /// @notice Records a grant signed by the patient (or a delegate) and relayed by anyone.
    function grantBySig(
        address patient,
        address grantee,
        ScopeKind kind,
        bytes32 scope,
        uint32 purpose,
        uint64 expiry,
        uint256 nonce,
        uint256 deadline,
        bytes calldata signature
    ) external returns (bytes32 grantId) {
        bytes32 structHash =
            keccak256(abi.encode(GRANT_TYPEHASH, patient, grantee, uint8(kind), scope, purpose, expiry, nonce, deadline));
        address signer = _useSignature(patient, structHash, nonce, deadline, signature);
        return _grant(patient, grantee, kind, scope, purpose, expiry, signer);
    }

    /// @notice Records a revocation signed by the patient (or a delegate).
    function revokeBySig(
        address patient,
        address grantee,
        ScopeKind kind,
        bytes32 scope,
        uint32 purpose,
        uint256 nonce,
        uint256 deadline,
        bytes calldata signature
    ) external {
        bytes32 structHash =
            keccak256(abi.encode(REVOKE_TYPEHASH, patient, grantee, uint8(kind), scope, purpose, nonce, deadline));
        address signer = _useSignature(patient, structHash, nonce, deadline, signature);
        bytes32 grantId = grantIdOf(patient, grantee, kind, scope, purpose);
        Grant storage g = grants[grantId];
        if (g.patient == address(0)) revert UnknownGrant(grantId);
        _revoke(grantId, g, signer);
    }

    // ---- emergency (break-glass) access -----------------------------------------

    /// @notice A registered institution opens time-boxed access to a patient's scope.
    function openEmergency(address patient, bytes32 scope, uint64 duration, string calldata reason)
        external
        returns (bytes32 emergencyId)
    {
        if (!registry.isRegistered(msg.sender)) revert NotRegisteredInstitution(msg.sender);
        if (duration == 0 || duration > MAX_EMERGENCY) revert InvalidDuration(duration);
        if (bytes(reason).length == 0) revert EmptyReason();
        emergencyCounter += 1;
        emergencyId = keccak256(abi.encode(msg.sender, patient, scope, emergencyCounter));
        uint64 until = uint64(block.timestamp) + duration;
        emergencies[emergencyId] = Emergency(msg.sender, patient, scope, until, false);
        emit EmergencyOpened(emergencyId, msg.sender, patient, scope, until, reason);
    }

    /// @notice Closes a break-glass access early (by its institution or the patient).
    function closeEmergency(bytes32 emergencyId) external {
        Emergency storage e = emergencies[emergencyId];
        if (e.institution == address(0) || e.closed || (msg.sender != e.institution && msg.sender != e.patient)) {
            revert CannotClose(emergencyId, msg.sender);
        }
        e.closed = true;
        emit EmergencyClosed(emergencyId, msg.sender);
    }

    // ---- views ------------------------------------------------------------------

    /// @notice The id of the grant for this (patient, grantee, kind, scope, purpose).
    function grantIdOf(address patient, address grantee, ScopeKind kind, bytes32 scope, uint32 purpose)
        public
        pure
        returns (bytes32)
    {
        return keccak256(abi.encode(patient, grantee, uint8(kind), scope, purpose));
    }

    /// @notice A grant by id.
    function grantOf(bytes32 grantId) external view returns (Grant memory) {
        return grants[grantId];
    }

    /// @notice Whether `grantee` may access `scope` for `purpose` right now.
    function isAllowed(address patient, address grantee, ScopeKind kind, bytes32 scope, uint32 purpose)
        external
        view
        returns (bool)
    {
        Grant storage g = grants[grantIdOf(patient, grantee, kind, scope, purpose)];
        return g.patient != address(0) && !g.revoked && g.expiry > block.timestamp;
    }

    /// @notice A break-glass access by id.
    function emergencyOf(bytes32 emergencyId) external view returns (Emergency memory) {
        return emergencies[emergencyId];
    }

    // ---- internals --------------------------------------------------------------

    function _requireActor(address actor, address patient) private view {
        if (actor != patient && delegateUntil[patient][actor] <= block.timestamp) {
            revert NotPatientOrDelegate(actor, patient);
        }
    }

    function _grant(
        address patient,
        address grantee,
        ScopeKind kind,
        bytes32 scope,
        uint32 purpose,
        uint64 expiry,
        address by
    ) private returns (bytes32 grantId) {
        if (grantee == address(0)) revert ZeroGrantee();
        if (expiry <= block.timestamp) revert ExpiryInPast(expiry);
        grantId = grantIdOf(patient, grantee, kind, scope, purpose);
        grants[grantId] = Grant(patient, grantee, kind, scope, purpose, expiry, false);
        emit GrantCreated(grantId, patient, grantee, kind, scope, purpose, expiry, by);
    }

    function _revoke(bytes32 grantId, Grant storage g, address by) private {
        g.revoked = true;
        emit GrantRevoked(grantId, g.patient, g.grantee, by);
    }

    /// @dev Checks deadline, nonce and signature; consumes the nonce; returns the signer,
    ///      who must be the patient or one of their live delegates.
    function _useSignature(address patient, bytes32 structHash, uint256 nonce, uint256 deadline, bytes calldata sig)
        private
        returns (address signer)
    {
        if (block.timestamp > deadline) revert SignatureExpired(deadline);
        if (nonce != nonces[patient]) revert InvalidNonce(nonces[patient], nonce);
        signer = _recover(keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash)), sig);
        _requireActor(signer, patient);
        nonces[patient] = nonce + 1;
    }

    function _recover(bytes32 digest, bytes calldata sig) private pure returns (address signer) {
        if (sig.length != 65) revert InvalidSignature();
        bytes32 r = bytes32(sig[0:32]);
        bytes32 s = bytes32(sig[32:64]);
        uint8 v = uint8(sig[64]);
        if (v < 27) v += 27;
        if (uint256(s) > HALF_CURVE_ORDER || (v != 27 && v != 28)) revert InvalidSignature();
        signer = ecrecover(digest, v, r, s);
        if (signer == address(0)) revert InvalidSignature();
    }
}
